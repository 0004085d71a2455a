"""Records in, token examples out: validation, prompt template, tokenisation, truncation, padding.

What it is for: every rule of spec/data.md. Each public `prepare_*` function validates *all* records
before tokenising any (an error names the record index, the key, what was expected and what came)
and returns plain examples (lists of token ids) that the trainers batch with `pad_batch`.

What it is not: a dataset library. No streaming, no caching; records are small Python dicts.
"""

from __future__ import annotations

import unicodedata

from ..backends import get_backend
from ..core.errors import DataError

IGNORE_INDEX = -100

#: The prompt template of spec/data.md. Text prompts (instruction records, `prompt` keys, user turns)
#: are wrapped in it so that SFT, the reward model and DPO all see the same format.
USER_HEADER = "### Câu hỏi:\n"
ASSISTANT_HEADER = "### Trả lời:\n"
SYSTEM_HEADER = "### Hệ thống:\n"


def _describe(v) -> str:
    try:
        r = repr(v)
    except RecursionError:  # a value nested deeper than repr can go (JSON input can do that)
        r = "<lồng quá sâu / too deeply nested>"
    except ValueError:  # an int with more digits than Python converts to text
        r = "<số quá lớn / integer too large to print>"
    return f"{type(v).__name__} {r[:60]}{'…' if len(r) > 60 else ''}"


def record_error(i, key, expected, got) -> DataError:
    return DataError(
        f"bản ghi {i}, khóa '{key}': cần {expected[0]}, nhận được {_describe(got)} "
        f"/ record {i}, key '{key}': expected {expected[1]}, got {_describe(got)}"
    )


def _check_list(data, name):
    if not isinstance(data, (list, tuple)):
        raise DataError(
            f"'{name}' phải là list các dict, nhận được {type(data).__name__} "
            f"/ '{name}' must be a list of dicts, got {type(data).__name__}"
        )
    if len(data) == 0:
        raise DataError(f"'{name}' rỗng / '{name}' is empty")
    for i, r in enumerate(data):
        if not isinstance(r, dict):
            raise DataError(
                f"bản ghi {i} của '{name}' phải là dict, nhận được {_describe(r)} "
                f"/ record {i} of '{name}' must be a dict, got {_describe(r)}"
            )


def _text(r, i, key, *, allow_empty=False):
    if key not in r:
        raise DataError(f"bản ghi {i}, khóa '{key}': thiếu khóa (cần một chuỗi) "
                        f"/ record {i}, key '{key}': key missing (expected a string)")
    v = r[key]
    if not isinstance(v, str):
        raise record_error(i, key, ("một chuỗi", "a string"), v)
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no tokenizer can encode it
        raise record_error(i, key, ("văn bản UTF-8 hợp lệ (không có surrogate lẻ)",
                                    "valid UTF-8 text (no lone surrogate)"), v) from None
    if not allow_empty and not v.strip():
        raise record_error(i, key, ("một chuỗi không rỗng", "a non-empty string"), v)
    return unicodedata.normalize("NFC", v)


def _ids(r, i, key, vocab_size, *, allow_ignore=False, binary=False):
    v = r[key]
    if not isinstance(v, (list, tuple)) or len(v) == 0:
        raise record_error(i, key, ("list số nguyên không rỗng", "a non-empty list of ints"), v)
    for j, t in enumerate(v):
        if isinstance(t, bool) or not isinstance(t, int):
            raise record_error(i, f"{key}[{j}]", ("số nguyên", "an int"), t)
        if binary:
            if t not in (0, 1):
                raise record_error(i, f"{key}[{j}]", ("0 hoặc 1", "0 or 1"), t)
        elif allow_ignore and t == IGNORE_INDEX:
            continue
        elif not 0 <= t < vocab_size:
            raise record_error(
                i, f"{key}[{j}]", (f"id trong [0, {vocab_size})", f"an id in [0, {vocab_size})"), t
            )
    return list(v)


def format_prompt(prompt: str, system: str | None = None) -> str:
    """The template around a user prompt: header, prompt, newline, assistant header."""
    s = f"{SYSTEM_HEADER}{system}\n" if system else ""
    return f"{s}{USER_HEADER}{prompt}\n{ASSISTANT_HEADER}"


def format_instruction(instruction: str, input_text: str = "") -> str:
    body = f"{instruction}\n{input_text}" if input_text.strip() else instruction
    return format_prompt(body)


def _bos(tok):
    b = getattr(tok, "bos_token_id", None)
    return [b] if b is not None else []


def truncate_prompt(prompt_ids, response_len: int, max_len: int):
    """The prompt part of the truncation rule of spec/data.md: when prompt + response exceed `max_len`
    tokens, the prompt keeps its *last* tokens, at most max_len // 2 of them."""
    if len(prompt_ids) + response_len <= max_len:
        return list(prompt_ids)
    keep = min(len(prompt_ids), max_len // 2)
    return list(prompt_ids[len(prompt_ids) - keep:])


def generation_prompt_ids(prompt: str, tokenizer, max_len: int, max_new_tokens: int):
    """[bos] + templated `prompt`, truncated for an answer of `max_new_tokens` tokens by the same rule as
    training pairs (`truncate_prompt`), so the policy is asked what it was trained on and fits the model."""
    p_ids = _bos(tokenizer) + tokenizer.encode(format_prompt(unicodedata.normalize("NFC", prompt)))
    return truncate_prompt(p_ids, max_new_tokens, max_len)


def _join(prompt_ids, response_ids, max_len):
    """Prompt + response with the truncation rule of spec/data.md.

    When the pair does not fit, the prompt keeps its *last* tokens, at most max_len // 2 of them;
    then the response keeps its *first* tokens. Returns (input_ids, labels).
    """
    prompt_ids = truncate_prompt(prompt_ids, len(response_ids), max_len)
    response_ids = response_ids[: max_len - len(prompt_ids)]
    ids = prompt_ids + response_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + list(response_ids)
    return ids, labels


# ----------------------------------------------------------------------------------------------
# SFT
# ----------------------------------------------------------------------------------------------

def sft_kind(r: dict) -> str:
    if "input_ids" in r:
        return "tokens"
    if "messages" in r:
        return "messages"
    if "instruction" in r or "output" in r:
        return "instruction"
    if "prompt" in r or "completion" in r:
        return "prompt_completion"
    return "unknown"


def prepare_sft(records, tokenizer, max_seq_length: int, vocab_size: int, name="du_lieu_train"):
    """Validate every record, then tokenise. Returns a list of {"input_ids", "labels"}."""
    _check_list(records, name)
    parsed = []
    for i, r in enumerate(records):
        kind = sft_kind(r)
        if kind == "tokens":
            ids = _ids(r, i, "input_ids", vocab_size)
            labels = _ids(r, i, "labels", vocab_size, allow_ignore=True) if "labels" in r else list(ids)
            if len(labels) != len(ids):
                raise record_error(i, "labels", (f"độ dài {len(ids)} (bằng input_ids)",
                                                 f"length {len(ids)} (as input_ids)"), r["labels"])
            if "attention_mask" in r:
                mask = _ids(r, i, "attention_mask", vocab_size, binary=True)
                if len(mask) != len(ids):
                    raise record_error(i, "attention_mask", (f"độ dài {len(ids)}", f"length {len(ids)}"),
                                       r["attention_mask"])
                labels = [lab if m else IGNORE_INDEX for lab, m in zip(labels, mask)]
                n = max((j + 1 for j, m in enumerate(mask) if m), default=0)
                ids, labels = ids[:n], labels[:n]  # trailing padding of the record is dropped
            parsed.append(("tokens", ids, labels))
        elif kind == "instruction":
            ins = _text(r, i, "instruction")
            inp = _text(r, i, "input", allow_empty=True) if "input" in r else ""
            out = _text(r, i, "output")
            parsed.append(("text", format_instruction(ins, inp), out))
        elif kind == "prompt_completion":
            parsed.append(("text", format_prompt(_text(r, i, "prompt")), _text(r, i, "completion")))
        elif kind == "messages":
            parsed.append(("messages", _messages(r, i), None))
        else:
            raise DataError(
                f"bản ghi {i}: không nhận ra định dạng; cần một trong các khóa input_ids, "
                f"instruction/output, prompt/completion, messages; nhận được khóa {sorted(r, key=str)} "
                f"/ record {i}: unknown format; expected input_ids, instruction/output, "
                f"prompt/completion or messages, got keys {sorted(r, key=str)}"
            )

    examples = []
    eos = tokenizer.eos_token_id
    for i, (kind, a, b) in enumerate(parsed):
        if kind == "tokens":
            ids, labels = a[:max_seq_length], b[:max_seq_length]
        elif kind == "text":
            ids, labels = _join(_bos(tokenizer) + tokenizer.encode(a), tokenizer.encode(b) + [eos], max_seq_length)
        elif getattr(tokenizer, "chat_template", None) and hasattr(tokenizer, "encode_chat"):
            # the model's own chat template (Hugging Face tokenizers): assistant turns trained only
            ids, labels = tokenizer.encode_chat([{"role": r, "content": c} for r, c in a], max_seq_length)
        else:
            ids, labels = _render_messages(a, tokenizer, max_seq_length)
        if sum(1 for lab in labels[1:] if lab != IGNORE_INDEX) == 0:
            raise DataError(
                f"bản ghi {i}: không có token mục tiêu nào (labels toàn -100 sau khi dịch một vị trí "
                f"và cắt ở max_seq_length={max_seq_length}) / record {i}: no target token left "
                f"(every shifted label is -100 after truncation to max_seq_length={max_seq_length})"
            )
        examples.append({"input_ids": ids, "labels": labels, "index": i})
    return examples


_ROLES = {"system": SYSTEM_HEADER, "user": USER_HEADER, "assistant": ASSISTANT_HEADER}


def _messages(r, i):
    msgs = r["messages"]
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise record_error(i, "messages", ("list các tin nhắn không rỗng", "a non-empty list of messages"), msgs)
    out = []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise record_error(i, f"messages[{j}]", ("dict có role/content", "a dict with role/content"), m)
        role = m.get("role")
        if not isinstance(role, str) or role not in _ROLES:
            raise record_error(i, f"messages[{j}].role", ("'system', 'user' hoặc 'assistant'",
                                                          "'system', 'user' or 'assistant'"), role)
        out.append((role, _text(m, i, "content")))
    if not any(role == "assistant" for role, _ in out):
        raise record_error(i, "messages", ("ít nhất một lượt 'assistant'", "at least one 'assistant' turn"), msgs)
    return out


def _render_messages(msgs, tok, max_len):
    """Chat rendering of spec/data.md: `### <role>:\\n<content>\\n` per turn; an assistant turn is
    `### Trả lời:\\n<content><eos>` and only its content and EOS are trained."""
    ids, labels = list(_bos(tok)), [IGNORE_INDEX] * len(_bos(tok))
    for role, content in msgs:
        if role == "assistant":
            head = tok.encode(ASSISTANT_HEADER)
            body = tok.encode(content) + [tok.eos_token_id]
            ids += head + body
            labels += [IGNORE_INDEX] * len(head) + body
        else:
            part = tok.encode(f"{_ROLES[role]}{content}\n")
            ids += part
            labels += [IGNORE_INDEX] * len(part)
    return ids[:max_len], labels[:max_len]


# ----------------------------------------------------------------------------------------------
# Preference pairs (DPO, reward model)
# ----------------------------------------------------------------------------------------------

def prepare_pairs(records, tokenizer, max_seq_length: int, *, require_prompt: bool, allow_margin: bool,
                  name="preference_data"):
    """Validate every pair, then tokenise chosen and rejected after the (templated) prompt.

    Returns examples {"chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels", "margin", "index"}.
    """
    _check_list(records, name)
    be = get_backend()
    largest = float(be.xp.finfo(be.dtype).max)  # a margin must stay finite in the training dtype
    finite = ("một số thực hữu hạn", "a finite number")
    parsed = []
    for i, r in enumerate(records):
        if require_prompt or "prompt" in r:
            prompt = _text(r, i, "prompt")
        else:
            prompt = None
        chosen = _text(r, i, "chosen")
        rejected = _text(r, i, "rejected")
        if chosen == rejected:  # the pair teaches nothing: its loss stays at ln 2 whatever the weights
            raise record_error(i, "rejected", ("một văn bản khác 'chosen'", "a text different from 'chosen'"),
                               r["rejected"])
        margin = 0.0
        if "margin" in r:
            if not allow_margin:
                raise record_error(i, "margin", ("không có khóa này ở DPO", "no such key for DPO"), r["margin"])
            m = r["margin"]
            if isinstance(m, bool) or not isinstance(m, (int, float)) or m != m or m in (float("inf"), float("-inf")):
                raise record_error(i, "margin", finite, m)
            try:
                margin = float(m)
            except OverflowError:  # an int beyond the float range
                raise record_error(i, "margin", finite, m) from None
            if abs(margin) > largest:  # e.g. 1e308 in float32: it would overflow to inf in the loss
                raise record_error(i, "margin", (f"một số thực hữu hạn trong {be.dtype} (|margin| ≤ {largest:.7g})",
                                                 f"a finite number in {be.dtype} (|margin| <= {largest:.7g})"), m)
        parsed.append((prompt, chosen, rejected, margin))

    eos = tokenizer.eos_token_id
    out = []
    for i, (prompt, chosen, rejected, margin) in enumerate(parsed):
        p_ids = _bos(tokenizer) + (tokenizer.encode(format_prompt(prompt)) if prompt is not None else [])
        ex = {"index": i, "margin": margin}
        for key, text in (("chosen", chosen), ("rejected", rejected)):
            ids, labels = _join(p_ids, tokenizer.encode(text) + [eos], max_seq_length)
            ex[f"{key}_ids"], ex[f"{key}_labels"] = ids, labels
        out.append(ex)
    return out


def encode_for_scoring(text: str, tokenizer, max_seq_length: int, prompt: str | None = None):
    """Token ids a reward model scores: [bos] + (templated prompt) + text + [eos], truncated as pairs are."""
    p_ids = _bos(tokenizer) + (tokenizer.encode(format_prompt(prompt)) if prompt is not None else [])
    ids, _ = _join(p_ids, tokenizer.encode(unicodedata.normalize("NFC", text)) + [tokenizer.eos_token_id],
                   max_seq_length)
    return ids


# ----------------------------------------------------------------------------------------------
# Batching
# ----------------------------------------------------------------------------------------------

def pad_batch(seqs, pad_id: int, label_seqs=None):
    """Right-pad id lists into host lists (input_ids, attention_mask[, labels with -100])."""
    T = max(len(s) for s in seqs)
    ids = [list(s) + [pad_id] * (T - len(s)) for s in seqs]
    mask = [[1] * len(s) + [0] * (T - len(s)) for s in seqs]
    if label_seqs is None:
        return ids, mask
    labels = [list(lab) + [IGNORE_INDEX] * (T - len(lab)) for lab in label_seqs]
    return ids, mask, labels
