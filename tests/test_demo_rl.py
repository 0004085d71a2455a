"""The demo's GRPO reward (app/demo_rl.py: the arithmetic parser and the verifiable reward) and the demo
on a user's model (app/demo_model.py: --model folder or .gguf, --lora, the path checked before compute)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from vietnamese_ai_ref.app.cli import main
from vietnamese_ai_ref.app.demo import load_demo_data, run_demo
from vietnamese_ai_ref.app.demo_rl import arithmetic_prompts, dung_phep_tinh, phep_tinh, so_cuoi
from vietnamese_ai_ref.app.rundir import CliError
from vietnamese_ai_ref.io.api import luu_mo_hinh, tai_mo_hinh
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM


@pytest.mark.parametrize("prompt, want", [
    ("Tính 6 - 2.", 4), ("5 trừ 3 là mấy?", 2), ("3 cộng 5 là mấy?", 8), ("Tính phép cộng.\n0 + 2", 2),
    ("9 nhân 3 bằng mấy?", 27), ("6 x 7 = ?", 42), ("4 × 5", 20), ("8 chia 2 là mấy?", 4), ("8 : 2", 4),
    ("2 - 5", -3), ("7 chia 2", None), ("7 / 0", None), ("Số liền trước 3 là số nào?", None),
    ("Thủ đô của Ý là gì?", None), ("1,5 + 2", None)])
def test_phep_tinh_parses_one_operation(prompt, want):
    assert phep_tinh(prompt) == want


def test_so_cuoi_takes_the_last_integer():
    assert so_cuoi("Dạ, 6 - 2 = 4 ạ.") == 4
    assert so_cuoi("6-2=4") == 4 and so_cuoi("2 - 5 = -3.") == -3 and so_cuoi("Dạ, 5 + 5 = 10 ạ.") == 10
    assert so_cuoi("không có số") is None


def test_dung_phep_tinh_rewards():
    prompts = ["Tính 6 - 2.", "Tính 6 - 2.", "5 trừ 3 là mấy?", "Cà chua chín có màu gì?", "3 cộng 5 là mấy?"]
    comps = ["Dạ, 6 - 2 = 4 ạ.", "Dạ, 6 - 2 = 5 ạ.", "Dạ, 3 - 3 = 2 ạ.", "Màu đỏ.", "Dạ, ba cộng năm ạ."]
    assert dung_phep_tinh(prompts, comps, extra=[None] * 5) == [1.0, 0.0, 1.0, None, 0.0]


def test_bundled_arithmetic_prompts_train_and_heldout_are_disjoint():
    d = load_demo_data()
    train = arithmetic_prompts(d["pref_train"], d["sft_train"])
    held = arithmetic_prompts(d["pref_heldout"], d["sft_val"])
    assert (len(train), len(held)) == (264, 54) and not set(train) & set(held)
    assert held[:2] == ["Tính 6 - 2.", "5 trừ 3 là mấy?"] and "Tính phép cộng.\n2 + 1" in held


# ------------------------------------------------------------------ --model / --lora

def _tiny(tmp_path, name="tiny"):
    model = TransformerLM(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128, seed=3))
    path = tmp_path / name
    luu_mo_hinh(model, str(path))
    return model, path


def _check_run(s, run, path, lora):
    assert s["model"] == str(path) and s["lora"] == lora and s["stage3"] == "both"
    assert s["n_heldout_pairs"] == 12 and s["grpo_n_train_prompts"] == 8 and s["grpo_steps"] == 2
    assert 0.0 <= s["grpo_accuracy_after"] <= 1.0 and s["rm_heldout_accuracy"] >= 0.0
    policy = tai_mo_hinh(str(run / "policy"))  # a plain, loadable model: adapters merged
    assert not policy.has_adapters and policy.config.n_embd == 32
    assert json.loads((run / "config.json").read_text())["lora"] == lora


def test_demo_on_a_user_folder_model(tmp_path):
    model, path = _tiny(tmp_path)
    s = run_demo(out=tmp_path / "run", quiet=True, quick=True, model_path=str(path))
    _check_run(s, tmp_path / "run", path, None)
    trained = tai_mo_hinh(str(tmp_path / "run" / "policy"))
    w0, w1 = model.state_dict()["wte.weight"], trained.state_dict()["wte.weight"]
    assert w0.shape == w1.shape and abs(w1 - w0).max() > 0  # the user's model was trained, not a new one


def test_demo_on_a_user_model_with_lora(tmp_path):
    model, path = _tiny(tmp_path)
    s = run_demo(out=tmp_path / "run", quiet=True, quick=True, model_path=str(path), lora=2)
    _check_run(s, tmp_path / "run", path, 2)
    trained = tai_mo_hinh(str(tmp_path / "run" / "policy"))
    before, after = model.state_dict(), trained.state_dict()
    assert abs(after["wte.weight"] - before["wte.weight"]).max() == 0  # frozen base
    assert abs(after["h.0.attn.c_attn.weight"] - before["h.0.attn.c_attn.weight"]).max() > 0
    # the adapters train at LoRA rates (the SmolLM2 recipe's), not at the full-model rates
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    from vietnamese_ai_ref.app.demo_model import LORA_LR, USER_MODEL

    assert {k: config[k]["toc_do_hoc"] for k in LORA_LR} == LORA_LR
    assert all(LORA_LR[k] >= 10 * USER_MODEL["quick"][k]["toc_do_hoc"] for k in LORA_LR)


def _bpe_model():
    """A tiny GPT-2 with a byte-level BPE tokenizer (vocab 320) trained on the demo's texts: a GGUF file
    carries a BPE vocabulary (not our ByteTokenizer)."""
    tk = pytest.importorskip("tokenizers")
    from vietnamese_ai_ref.text.hf_tokenizer import HFTokenizer

    d = load_demo_data()
    corpus = [v for recs in d.values() for r in recs for v in r.values() if isinstance(v, str)]
    tok = tk.Tokenizer(tk.models.BPE())
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tk.decoders.ByteLevel()
    tok.train_from_iterator(corpus, tk.trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|endoftext|>", "<|bos|>", "<|eos|>"], show_progress=False,
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet()))
    hf = HFTokenizer(tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|endoftext|>")
    return TransformerLM(GPTConfig(n_layer=1, n_embd=32, n_head=2, n_positions=128, vocab_size=hf.vocab_size,
                                   seed=3), tokenizer=hf)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs the 'gguf' extra")
def test_demo_on_a_user_gguf_model(tmp_path):
    path = tmp_path / "tiny.gguf"
    luu_mo_hinh(_bpe_model(), str(path))
    s = run_demo(out=tmp_path / "run", quiet=True, quick=True, model_path=str(path), stage3="grpo")
    assert s["model"] == str(path) and s["grpo_steps"] == 2 and "dpo_heldout_accuracy" not in s
    policy = tai_mo_hinh(str(tmp_path / "run" / "policy"))
    assert type(policy.tokenizer).__name__ == "HFTokenizer" and policy.config.vocab_size == 320


@pytest.mark.parametrize("args, needle", [
    (["--model", "{tmp}/missing"], "không tìm thấy / not found"),
    (["--model", "{tmp}/missing.gguf"], ".gguf file not found"),
    (["--model", "{tmp}/empty"], "no config.json"),
    (["--model", "{tmp}/file.txt"], "neither a folder nor a .gguf file"),
    (["--lora", "4"], "--lora needs --model"),
])
def test_bad_model_path_is_a_usage_error_before_compute(tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    out = tmp_path / "run"
    argv = ["demo", "--quick", "--quiet", "--out", str(out)] + [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.startswith("lỗi / error: --")
    assert not out.exists() and not (tmp_path / "run.partial").exists()  # nothing made, nothing trained


def test_bad_stage3_and_lora_in_the_library():
    with pytest.raises(CliError, match="--stage3"):
        run_demo(quiet=True, quick=True, stage3="ppo")
    with pytest.raises(CliError, match="--lora"):
        run_demo(quiet=True, quick=True, model_path="x", lora=0)
