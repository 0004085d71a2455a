"""Fuzzing the record validators and the JSONL reader with Hypothesis: random dicts, wrong types, huge
and empty values, lone surrogates, unknown keys, random bytes. Every input is either accepted — and
then the output is well formed — or rejected with the documented error type (DataError for records,
JsonlError for files); never any other exception. No model runs here: only validators, with the byte
tokenizer."""

from __future__ import annotations

import json
import os
import tempfile

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vietnamese_ai_ref.text.jsonl import JsonlError, read_jsonl
from vietnamese_ai_ref.text.records import IGNORE_INDEX, DataError, prepare_pairs, prepare_sft
from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
VOCAB = 259
KEYS = ["input_ids", "labels", "attention_mask", "instruction", "input", "output", "prompt", "completion",
        "messages", "chosen", "rejected", "margin", "role", "content", "system", "cau_hoi", ""]

# any text, lone surrogates included (Hypothesis leaves out category Cs unless asked)
_chars = st.characters(exclude_categories=())
any_text = (st.text(_chars, max_size=40)
            | st.builds(lambda a, s, b: a + s + b, st.text(_chars, max_size=8), st.characters(categories=["Cs"]),
                        st.text(_chars, max_size=8)))
huge_text = st.builds(lambda c, n: c * n, st.characters(exclude_categories=()), st.integers(5_000, 60_000))
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-2**80, 2**80).map(lambda x: x * 2**40)
           | st.integers(300, 20_000).map(lambda n: 10**n)  # beyond float range and Python's digit limit
           | st.floats(allow_nan=True, allow_infinity=True) | any_text | huge_text | st.binary(max_size=8))
ids = st.lists(st.integers(-200, 300) | st.sampled_from([IGNORE_INDEX, 0, 1, VOCAB - 1, VOCAB]) | scalars,
               max_size=12)
message = st.dictionaries(st.sampled_from(["role", "content", "name"]),
                          st.sampled_from(["system", "user", "assistant", "robot"]) | scalars | ids, max_size=3)
values = scalars | ids | st.lists(message, max_size=4) | st.dictionaries(any_text, scalars, max_size=3)
# keys: mostly the known ones, plus unknown strings and non-string keys
keys = st.sampled_from(KEYS) | any_text | st.integers() | st.none() | st.tuples(st.integers())
record = st.dictionaries(keys, values, max_size=6)
# well-formed-ish records, so the accepting paths are explored as much as the rejecting ones
sft_like = st.one_of(
    st.fixed_dictionaries({"instruction": any_text, "output": any_text}, optional={"input": any_text, "x": values}),
    st.fixed_dictionaries({"prompt": any_text, "completion": any_text}),
    st.fixed_dictionaries({"input_ids": ids}, optional={"labels": ids, "attention_mask": ids}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4)}),
)
pair_like = st.fixed_dictionaries({"chosen": any_text, "rejected": any_text},
                                  optional={"prompt": any_text, "margin": scalars, "extra": values})
datasets = st.one_of(st.lists(record | sft_like | pair_like | scalars, max_size=5), scalars, record,
                     st.tuples(sft_like))


def check_sft_output(out, n):
    assert len(out) == n
    for e in out:
        assert len(e["input_ids"]) == len(e["labels"]) <= 16
        assert all(isinstance(t, int) and 0 <= t < VOCAB for t in e["input_ids"])
        assert any(lab != IGNORE_INDEX for lab in e["labels"][1:])


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.lists(sft_like, min_size=1, max_size=3) | datasets, max_len=st.integers(2, 16))
@example(data=[{1: "a", "b": 2}], max_len=8)  # mixed key types in an unknown-format record
@example(data=[{"instruction": "a\ud800", "output": "b"}], max_len=8)  # a lone surrogate
@example(data=[{"messages": [{"role": ["user"], "content": "x"}]}], max_len=8)  # an unhashable role
@example(data=[{"input_ids": [10**5000]}], max_len=8)  # an int too long to print in the message
def test_prepare_sft_accepts_or_raises_dataerror(data, max_len):
    try:
        out = prepare_sft(data, TOK, max_len, VOCAB)
    except DataError:
        return
    check_sft_output(out, len(data))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.lists(pair_like, min_size=1, max_size=3) | datasets, max_len=st.integers(2, 16),
       require_prompt=st.booleans(), allow_margin=st.booleans())
@example(data=[{"chosen": "a", "rejected": "b", "margin": 10**400}], max_len=8, require_prompt=False,
         allow_margin=True)  # an int too large for a float
def test_prepare_pairs_accepts_or_raises_dataerror(data, max_len, require_prompt, allow_margin):
    try:
        out = prepare_pairs(data, TOK, max_len, require_prompt=require_prompt, allow_margin=allow_margin)
    except DataError:
        return
    assert len(out) == len(data)
    for e in out:
        for k in ("chosen", "rejected"):
            assert 0 < len(e[f"{k}_ids"]) == len(e[f"{k}_labels"]) <= max_len
        assert isinstance(e["margin"], float) and e["margin"] == e["margin"]


# ---------------------------------------------------------------------------------------------
# the JSONL reader
# ---------------------------------------------------------------------------------------------

json_line = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | any_text,
                         lambda c: st.lists(c, max_size=3) | st.dictionaries(any_text, c, max_size=3),
                         max_leaves=8).map(lambda v: json.dumps(v).encode("utf-8"))
nested = st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n)  # deep nesting
long_int = st.integers(1, 20_000).map(lambda n: b'{"a": ' + b"7" * n + b"}")  # Python's int-digit limit
deep_value = st.integers(1, 3_000).map(lambda n: b'{"input_ids": ' + b"[" * n + b"]" * n + b"}")
line = st.binary(max_size=60) | json_line | nested | long_int | deep_value | st.sampled_from(
    [b"", b"   ", b"{}", b'{"a": 1}', b"\xef\xbb\xbf{}", b"\xff\xfe", b"NaN", b'"\\ud800"', b'{"a": "\\ud800"}',
     b"\x00", b"[1,", b"{" * 3])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(lines=st.lists(line, max_size=6), trailing_newline=st.booleans())
@example(lines=[b"[" * 100_000 + b"]" * 100_000], trailing_newline=True)
@example(lines=[b'{"a": ' + b"7" * 5000 + b"}"], trailing_newline=True)
@example(lines=[b'{"input_ids": ' + b"[" * 950 + b"]" * 950 + b"}"], trailing_newline=False)
def test_read_jsonl_accepts_or_raises_jsonlerror(lines, trailing_newline):
    body = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        try:
            recs = read_jsonl(path)
        except JsonlError as e:
            assert path in str(e)
            return
        assert recs and all(isinstance(r, dict) for r in recs)
        # what the reader accepts goes on to the validators: DataError or a clean result there
        try:
            prepare_sft(recs, TOK, 16, VOCAB)
        except DataError:
            pass
    finally:
        os.unlink(path)
