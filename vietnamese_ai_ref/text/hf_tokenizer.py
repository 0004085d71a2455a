"""`HFTokenizer`: a Hugging Face tokenizer.json behind the reference tokenizer protocol, plus chat templates.

What it is for: using the tokenizer that ships with a local Hugging Face model (Llama, Qwen2, Mistral,
GPT-2 ...) in the trainers and in generation. It wraps `tokenizers.Tokenizer.from_file(tokenizer.json)`
(the optional extra `hf`: pip install 'vietnamese-ai-ref[hf]'), reads the special tokens from
tokenizer_config.json (bos_token, eos_token, pad_token) or else from the model's config.json ids, and
follows the protocol of tokenizer.py: vocab_size, pad/bos/eos ids, encode(text, add_bos, add_eos),
decode(ids, skip_special_tokens), save(directory), load(directory). `encode` never adds special tokens
on its own (no post-processor): bos/eos are added only when asked, so the trainers decide.
`apply_chat_template` renders tokenizer_config.json's `chat_template` with jinja2 the way transformers
does (sandboxed environment, trim_blocks, lstrip_blocks, tojson, raise_exception); `encode_chat`
tokenizes a conversation and marks as trainable exactly the assistant turns (completion-only mask:
the text between the prompt rendered up to each assistant turn, with the generation prompt, and the
prompt rendered through that turn).

What it is not: a tokenizer trainer, a slow (sentencepiece/vocab.json) tokenizer loader, or a
downloader. Without a tokenizer.json it refuses; `AutoTokenizer.from_pretrained(path).save_pretrained(path)`
writes one.
"""

from __future__ import annotations

import json
import os

from ..core.errors import TokenizerError
from ..text.jsonl import read_json_object
from ..text.tokenizer import TOKENIZER_CONFIG_NAME

__all__ = ["HFTokenizer", "TOKENIZER_JSON", "IGNORE_INDEX"]

TOKENIZER_JSON = "tokenizer.json"
IGNORE_INDEX = -100  # label of a token that is not trained (as records.IGNORE_INDEX)
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")


def _import_tokenizers():
    try:
        import tokenizers
    except ImportError as e:
        raise TokenizerError(
            "Cần gói 'tokenizers' (phần bổ sung 'hf') / the 'tokenizers' package is needed (extra 'hf'): "
            "pip install 'vietnamese-ai-ref[hf]'"
        ) from e
    return tokenizers


def _import_jinja2():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
    except ImportError as e:
        raise TokenizerError(
            "apply_chat_template cần jinja2 / apply_chat_template needs jinja2: pip install jinja2"
        ) from e
    return jinja2


def _token_text(v):
    """tokenizer_config.json spells a special token as a string or as an AddedToken dict {"content": ...}."""
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def _read_json(path):
    return read_json_object(path, error=TokenizerError)


class HFTokenizer:
    """A `tokenizers.Tokenizer` with resolved bos/eos/pad ids and an optional jinja2 chat template.

    bos_token_id may be None (Qwen2 has none: then add_bos adds nothing). pad_token_id falls back to
    eos_token_id when the tokenizer defines no pad token (padding is masked, so its id is never learned).
    """

    def __init__(self, tokenizer, *, bos_token=None, eos_token=None, pad_token=None, unk_token=None,
                 chat_template: str | None = None, extra_config: dict | None = None):
        self._tok = tokenizer
        self.chat_template = chat_template  # jinja2 source, or None
        self._extra = dict(extra_config or {})  # other tokenizer_config.json keys, written back by save()
        self.special_tokens = {}  # "bos_token" -> text, for the ones that exist
        for key, text in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token),
                          ("unk_token", unk_token)):
            if text is None:
                continue
            if self._tok.token_to_id(text) is None:
                raise TokenizerError(
                    f"Token đặc biệt không có trong từ vựng / special token {key}={text!r} is not in the vocabulary"
                )
            self.special_tokens[key] = text
        if "eos_token" not in self.special_tokens:
            raise TokenizerError(
                "Tokenizer thiếu eos_token / the tokenizer has no eos_token (set it in tokenizer_config.json, "
                "config.json eos_token_id, or pass eos_token=...): the trainers end every answer with it"
            )
        self.eos_token_id = self._tok.token_to_id(self.special_tokens["eos_token"])
        self.bos_token_id = (self._tok.token_to_id(self.special_tokens["bos_token"])
                             if "bos_token" in self.special_tokens else None)
        self.pad_token_id = (self._tok.token_to_id(self.special_tokens["pad_token"])
                             if "pad_token" in self.special_tokens else self.eos_token_id)
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1 if vocab else 0  # ids may skip numbers: the largest + 1
        self._template = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_file(cls, tokenizer_json, **kwargs) -> "HFTokenizer":
        """From a tokenizer.json path; special tokens and chat_template as keyword arguments."""
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(os.fspath(tokenizer_json))
        except Exception as e:  # tokenizers raises its own Exception type on a bad file
            raise TokenizerError(f"Không đọc được / cannot read {tokenizer_json}: {e}") from e
        return cls(tok, **kwargs)

    @classmethod
    def from_pretrained(cls, directory, model_config: dict | None = None, **overrides) -> "HFTokenizer":
        """From a folder with tokenizer.json (+ tokenizer_config.json, + config.json for fallback ids).

        Special tokens: `overrides` (bos_token=..., eos_token=..., pad_token=...), else
        tokenizer_config.json's bos_token/eos_token/pad_token/unk_token, else the ids of the model's
        config.json (bos_token_id, eos_token_id (the first of a list), pad_token_id).
        """
        directory = os.fspath(directory)
        path = os.path.join(directory, TOKENIZER_JSON)
        if not os.path.isfile(path):
            raise TokenizerError(f"Thiếu tệp / missing file: {path}")
        tokenizers = _import_tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:
            raise TokenizerError(f"Không đọc được / cannot read {path}: {e}") from e
        tc_path = os.path.join(directory, TOKENIZER_CONFIG_NAME)
        tc = _read_json(tc_path) if os.path.isfile(tc_path) else {}
        if model_config is None:
            mc_path = os.path.join(directory, "config.json")
            model_config = _read_json(mc_path) if os.path.isfile(mc_path) else {}
        kw = {}
        for key in _SPECIAL_KEYS:
            text = _token_text(tc.get(key))
            if text is None:  # fall back to the model config's id
                tid = model_config.get(key + "_id")
                if isinstance(tid, list):
                    tid = tid[0] if tid else None
                if isinstance(tid, int) and not isinstance(tid, bool):
                    text = tok.id_to_token(tid)
            kw[key] = text
        kw.update({k: v for k, v in overrides.items() if k in _SPECIAL_KEYS})
        template = tc.get("chat_template")
        if isinstance(template, list):  # several named templates: use "default"
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        if template is None and os.path.isfile(os.path.join(directory, "chat_template.jinja")):
            with open(os.path.join(directory, "chat_template.jinja"), encoding="utf-8") as f:
                template = f.read()
        template = overrides.get("chat_template", template)
        extra = {k: v for k, v in tc.items() if k not in _SPECIAL_KEYS and k != "chat_template"}
        return cls(tok, chat_template=template, extra_config=extra, **kw)

    @classmethod
    def load(cls, directory) -> "HFTokenizer":
        """The inverse of `save` (what `tokenizer.load_tokenizer` calls for tokenizer_class "HFTokenizer")."""
        return cls.from_pretrained(directory)

    # -- the protocol ----------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list:
        """Token ids of `text` (no special tokens added by the tokenizer), optionally with bos/eos.

        Special-token strings inside `text` (e.g. "<|im_end|>") become their ids, as in transformers.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode() cần một chuỗi str / encode() needs a str, got {type(text).__name__}")
        ids = list(self._tok.encode(text, add_special_tokens=False).ids)
        if add_bos and self.bos_token_id is not None:
            ids.insert(0, self.bos_token_id)
        if add_eos:
            ids.append(self.eos_token_id)
        return ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids`; special tokens dropped when `skip_special_tokens`."""
        ids = [int(t) for t in ids]
        bad = [t for t in ids if not 0 <= t < self.vocab_size]
        if bad:
            raise TokenizerError(
                f"Mã token ngoài phạm vi / token id out of range: {bad[0]} not in [0, {self.vocab_size})"
            )
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str):
        return self._tok.token_to_id(token)

    def id_to_token(self, tid: int):
        return self._tok.id_to_token(int(tid))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"HFTokenizer(vocab_size={self.vocab_size}, bos={self.bos_token_id}, eos={self.eos_token_id}, "
                f"pad={self.pad_token_id}, chat_template={'yes' if self.chat_template else 'no'})")

    # -- chat templates --------------------------------------------------------------------
    def _compiled(self):
        if not self.chat_template:
            raise TokenizerError("Tokenizer không có chat_template / the tokenizer has no chat_template "
                                 "(tokenizer_config.json 'chat_template')")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        return self._template

    def apply_chat_template(self, messages, add_generation_prompt: bool = False, tokenize: bool = False, **kwargs):
        """Render `messages` ([{"role", "content"}, ...]) with the chat template; ids when `tokenize`.

        The template sees messages, add_generation_prompt, bos_token, eos_token, pad_token, unk_token
        and any extra keyword argument, as in transformers' apply_chat_template.
        """
        if not isinstance(messages, (list, tuple)) or not all(isinstance(m, dict) for m in messages):
            raise TokenizerError("messages phải là list các dict / messages must be a list of dicts with role/content")
        jinja2 = _import_jinja2()
        variables = {k: None for k in _SPECIAL_KEYS}
        variables.update(self.special_tokens)
        variables.update(kwargs)
        try:
            text = self._compiled().render(messages=[dict(m) for m in messages],
                                           add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.exceptions.TemplateError as e:
            raise TokenizerError(f"Lỗi chat_template / chat_template error: {e}") from e
        return self.encode(text) if tokenize else text

    def encode_chat(self, messages, max_length: int | None = None) -> tuple:
        """(input_ids, labels) of a conversation; labels are IGNORE_INDEX except on assistant turns.

        For each assistant turn k the trained text is what rendering messages[:k+1] adds after
        rendering messages[:k] with the generation prompt: the answer and its end-of-turn marker, not
        the role header. The full conversation is tokenized once; a token is trained when its first
        character lies in a trained span. A template whose rendering of a prefix is not a prefix of the
        full rendering raises (naming the turn). Truncated to `max_length` tokens (keeps the start).
        """
        msgs = [dict(m) for m in messages]
        if not any(m.get("role") == "assistant" for m in msgs):
            raise TokenizerError("Hội thoại không có lượt 'assistant' / the conversation has no assistant turn")
        full = self.apply_chat_template(msgs)
        spans = []
        for k, m in enumerate(msgs):
            if m.get("role") != "assistant":
                continue
            before = self.apply_chat_template(msgs[:k], add_generation_prompt=True) if k else ""
            through = self.apply_chat_template(msgs[:k + 1])
            if not (full.startswith(through) and through.startswith(before)):
                raise TokenizerError(
                    f"chat_template không cho tiền tố ổn định ở lượt {k} / the chat_template does not render "
                    f"messages[:{k + 1}] as a prefix of the whole conversation (turn {k}): cannot mask "
                    f"the assistant tokens"
                )
            spans.append((len(before), len(through)))
        enc = self._tok.encode(full, add_special_tokens=False)
        ids = list(enc.ids)
        labels = []
        for tid, (start, end) in zip(ids, enc.offsets):
            trained = end > start and any(a <= start < b for a, b in spans)
            labels.append(tid if trained else IGNORE_INDEX)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        return ids, labels

    # -- files -----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        """tokenizer_config.json: transformers' keys (so AutoTokenizer loads the folder) plus ours."""
        out = {k: v for k, v in self._extra.items() if k not in ("tokenizer_class", "vocab_size", "pad_token_id",
                                                                   "bos_token_id", "eos_token_id")}
        out.update({
            "tokenizer_class": "PreTrainedTokenizerFast",  # transformers' class for a bare tokenizer.json
            "vietnamese_ai_ref_tokenizer": type(self).__name__,
            "vocab_size": self.vocab_size,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        })
        out.update(self.special_tokens)
        if "pad_token" not in self.special_tokens:
            out["pad_token"] = self.special_tokens["eos_token"]
        if self.chat_template:
            out["chat_template"] = self.chat_template
        return out

    def save(self, directory) -> None:
        """Write tokenizer.json and tokenizer_config.json into `directory` (created if missing)."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, TOKENIZER_JSON))
        with open(os.path.join(directory, TOKENIZER_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(self.config_dict(), f, ensure_ascii=False, indent=2)
            f.write("\n")


def _compile_template(source: str):
    """A jinja2 template compiled as transformers does (sandboxed, trim_blocks, lstrip_blocks, loopcontrols)."""
    import datetime

    jinja2 = _import_jinja2()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.datetime.now().strftime(fmt)

    class _Generation(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag) renders its body."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as e:
        raise TokenizerError(f"chat_template không hợp lệ / invalid chat_template: {e}") from e
