"""ByteTokenizer: ids, lossless round trips (Vietnamese NFC and NFD alike), specials, files, protocol."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vietnamese_ai_ref.text.loading import load_tokenizer, register_tokenizer
from vietnamese_ai_ref.text.tokenizer import TOKENIZER_CONFIG_NAME, ByteTokenizer, TokenizerError

VI = "Xin chào, bạn khỏe không?"


def test_constants():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (259, 256, 257, 258)
    assert len(tok) == 259


def test_vietnamese_round_trip_and_bytes():
    tok = ByteTokenizer()
    ids = tok.encode(VI)
    assert ids == list(VI.encode("utf-8"))
    assert all(0 <= i < 256 for i in ids)
    assert tok.decode(ids) == VI
    assert tok.encode(VI, add_bos=True, add_eos=True) == [257] + ids + [258]
    assert tok.decode(tok.encode(VI, add_bos=True, add_eos=True)) == VI


def test_nfc_and_nfd_are_different_ids_and_both_lossless():
    tok = ByteTokenizer()
    nfc = unicodedata.normalize("NFC", "Tiếng Việt rất đẹp: ệ ở ữ")
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    a, b = tok.encode(nfc), tok.encode(nfd)
    assert a != b  # the tokenizer does not normalise (the data layer does NFC)
    assert len(b) > len(a)
    assert tok.decode(a) == nfc
    assert tok.decode(b) == nfd
    # "ệ": NFC is U+1EC7 (3 bytes); NFD is e + U+0323 + U+0302 (1 + 2 + 2 bytes)
    assert tok.encode("\u1ec7") == [0xE1, 0xBB, 0x87]
    assert tok.encode("e\u0323\u0302") == [0x65, 0xCC, 0xA3, 0xCC, 0x82]


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_round_trip_any_text(s):
    tok = ByteTokenizer()
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode(tok.encode(s, add_bos=True, add_eos=True)) == s


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x00C0, max_codepoint=0x1EFF)))
def test_round_trip_normal_forms(s):
    tok = ByteTokenizer()
    for form in ("NFC", "NFD"):
        t = unicodedata.normalize(form, s)
        assert tok.decode(tok.encode(t)) == t


def test_decode_specials():
    tok = ByteTokenizer()
    ids = [257] + tok.encode("chào") + [256, 258]
    assert tok.decode(ids) == "chào"
    assert tok.decode(ids, skip_special_tokens=False) == "<bos>chào<pad><eos>"


def test_decode_invalid_utf8_is_replaced():
    tok = ByteTokenizer()
    assert tok.decode([0xFF, ord("a")]) == "\ufffda"
    assert tok.decode(tok.encode("à")[:1]) == "\ufffd"  # a cut multi-byte character


def test_errors():
    tok = ByteTokenizer()
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([259])
    with pytest.raises(TokenizerError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(TokenizerError, match="surrogate"):
        tok.encode("a\ud800b")
    with pytest.raises(TokenizerError, match="str"):
        tok.encode(b"bytes")


def test_save_and_load(tmp_path):
    tok = ByteTokenizer()
    tok.save(tmp_path)
    cfg = json.loads((tmp_path / TOKENIZER_CONFIG_NAME).read_text(encoding="utf-8"))
    assert cfg["tokenizer_class"] == "ByteTokenizer"
    assert (cfg["pad_token_id"], cfg["bos_token_id"], cfg["eos_token_id"], cfg["vocab_size"]) == (256, 257, 258, 259)
    assert load_tokenizer(tmp_path) == tok


def test_load_errors(tmp_path):
    with pytest.raises(TokenizerError, match="missing file"):
        load_tokenizer(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_NAME).write_text(json.dumps({"tokenizer_class": "Nope"}))
    with pytest.raises(TokenizerError, match="unknown tokenizer class"):
        load_tokenizer(tmp_path)
    (tmp_path / TOKENIZER_CONFIG_NAME).write_text(json.dumps({"tokenizer_class": "ByteTokenizer", "eos_token_id": 2}))
    with pytest.raises(TokenizerError, match="eos_token_id"):
        load_tokenizer(tmp_path)


def test_protocol_plugin(tmp_path):
    """Another tokenizer plugs in through register_tokenizer + save/load."""

    @register_tokenizer
    class UpperTokenizer(ByteTokenizer):
        def encode(self, text, add_bos=False, add_eos=False):
            return super().encode(text.upper(), add_bos, add_eos)

        def config_dict(self):
            return dict(super().config_dict(), tokenizer_class="UpperTokenizer")

    UpperTokenizer().save(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert type(tok).__name__ == "UpperTokenizer"
    assert tok.decode(tok.encode("abc")) == "ABC"
