"""Checkpoints during training, resume, Ctrl-C, and the non-finite guard / skip (spec/api.md
"Checkpoints and resume"). In-process; tests/test_resume_kill.py does the SIGKILL subprocess runs."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest

from vietnamese_ai_ref import DPOTrainer, NonFiniteError, RewardModel, RLHFPipeline, SFTTrainer, losses
from vietnamese_ai_ref.io import checkpoints as checkpointing
from vietnamese_ai_ref.io.checkpoints import (DEFAULT_KEEP, DEFAULT_SAVE_EVERY, FORMAT_VERSION, INTERRUPT_DIR,
                                             CheckpointError, list_checkpoints, load_checkpoint, tim_checkpoint)
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

SFT_DATA = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(4) for b in range(4)]
PREF = [{"prompt": f"Tính {a} + {b}", "chosen": f"Dạ, {a + b} ạ.", "rejected": "Không biết."}
        for a in range(4) for b in range(3)]


def tiny(**kw):
    cfg = dict(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=0, embd_pdrop=0.1, attn_pdrop=0.1,
               resid_pdrop=0.1)
    cfg.update(kw)
    return TransformerLM(GPTConfig(**cfg))


def sft(**kw):
    cfg = dict(so_vong=3, kich_thuoc_batch=2, gradient_accumulation=2, toc_do_hoc=1e-3, logging_steps=3, seed=5)
    cfg.update(kw)
    return SFTTrainer(**cfg)


def weights(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(np.array_equal(wa[k], wb[k]) for k in wa)


def reference_run(**kw):
    m = tiny()
    tr = sft(**kw)
    r = tr.huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3])
    return m, r, tr.lay_lich_su()


def send_sigint():
    os.kill(os.getpid(), signal.SIGINT)


# ---------------------------------------------------------------------------------------------
# layout, pruning, defaults
# ---------------------------------------------------------------------------------------------

def test_layout_pruning_and_contents(tmp_path):
    ck = tmp_path / "ck"
    m = tiny()
    tr = sft()
    r = tr.huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck, luu_moi=2)
    assert r["global_step"] == 12
    assert [s for s, _ in list_checkpoints(ck)] == [10, 12]  # giu_lai=2 (the default) keeps the newest two
    assert DEFAULT_KEEP == 2
    assert sorted(os.listdir(ck)) == ["checkpoint-00000010", "checkpoint-00000012"]
    last = ck / "checkpoint-00000012"
    assert sorted(os.listdir(last)) == ["model", "optimizer.safetensors", "trainer_state.json"]
    assert sorted(os.listdir(last / "model")) == ["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json"]
    with open(last / "trainer_state.json", encoding="utf-8") as f:
        state = json.load(f)
    assert state["format_version"] == FORMAT_VERSION == 1
    assert state["kind"] == "sft"
    loop = state["loop"]
    assert (loop["global_step"], loop["epoch"], loop["next_window"], loop["epochs_done"]) == (12, 3, 0, 3)
    assert loop["finished"] is True and loop["skipped"] == 0 and loop["window_losses"] == []
    assert loop["history"] == tr.lay_lich_su()
    assert state["optimizer"]["step_count"] == 12
    assert [len(g["names"]) for g in state["optimizer"]["groups"]] == [6, 10]  # decay / no-decay groups
    assert state["identity"]["trainer_config"] == tr.thong_ke()["cau_hinh"]
    assert state["identity"]["settings"]["epochs"] == 3 and state["identity"]["n_examples"] == 16
    assert state["dropout_rng"]["state"]["bit_generator"] == "PCG64"
    # the model folder is a normal checkpoint
    assert same_weights(TransformerLM.load(last / "model"), m)
    from safetensors.numpy import load_file

    opt = load_file(str(last / "optimizer.safetensors"))
    assert sorted(opt) == ["group0.m", "group0.v", "group1.m", "group1.v"]
    assert opt["group0.v"].min() >= 0 and opt["group0.v"].max() > 0
    # a mid-run checkpoint holds the open logging window: steps 10 (logged at 9) -> one loss pending
    with open(ck / "checkpoint-00000010" / "trainer_state.json", encoding="utf-8") as f:
        mid = json.load(f)["loop"]
    assert (mid["global_step"], mid["epoch"], mid["next_window"], mid["finished"]) == (10, 2, 2, False)
    assert len(mid["window_losses"]) == 1 and mid["history"]["step"] == [3, 6, 9]
    assert len(mid["history"]["eval_loss"]) == 2


def test_default_every_50_plus_final(tmp_path):
    assert DEFAULT_SAVE_EVERY == 50
    sft().huan_luyen(tiny(), SFT_DATA, thu_muc_checkpoint=tmp_path / "ck")
    assert [s for s, _ in list_checkpoints(tmp_path / "ck")] == [12]  # 12 < 50 steps: only the final one
    assert not os.path.exists(INTERRUPT_DIR)


def test_checkpointing_does_not_perturb_and_every_checkpoint_resumes_bit_identical(tmp_path):
    m_ref, r_ref, h_ref = reference_run()
    ck = tmp_path / "ck"
    m = tiny()
    r = sft().huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck, luu_moi=2, giu_lai=6)
    assert same_weights(m, m_ref) and r["history"] == r_ref["history"]
    found = list_checkpoints(ck)
    assert [s for s, _ in found] == [2, 4, 6, 8, 10, 12]
    for step, path in found:
        m2 = tiny()
        tr = sft()
        r2 = tr.huan_luyen(m2, SFT_DATA, du_lieu_val=SFT_DATA[:3], tiep_tuc_tu=path)
        assert same_weights(m2, m_ref), step
        assert tr.lay_lich_su() == h_ref, step
        assert r2["history"] == r_ref["history"] and r2["global_step"] == 12 and r2["so_epoch"] == 3


def test_resume_from_root_directory_picks_newest(tmp_path):
    ck = tmp_path / "ck"
    sft().huan_luyen(tiny(), SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck, luu_moi=4)
    assert tim_checkpoint(ck).endswith("checkpoint-00000012")
    assert load_checkpoint(ck).global_step == 12


def test_resume_of_finished_run_trains_nothing(tmp_path):
    m_ref, r_ref, _ = reference_run()
    ck = tmp_path / "ck"
    sft().huan_luyen(tiny(), SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck)
    calls = []
    m = tiny()
    tr = sft()
    r = tr.huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], tiep_tuc_tu=ck, thu_muc_checkpoint=ck,
                      callback=calls.append)
    assert calls == [] and same_weights(m, m_ref)
    assert r["history"] == r_ref["history"] and tr.thong_ke()["global_step"] == 12


def test_callback_stop_then_resume_keeps_stop(tmp_path):
    ck = tmp_path / "ck"
    tr = sft(logging_steps=1)
    r = tr.huan_luyen(tiny(), SFT_DATA, thu_muc_checkpoint=ck, callback=lambda e: e["step"] < 5)
    assert r["global_step"] == 5 and tr.thong_ke()["dung_som"] is True
    with open(os.path.join(tim_checkpoint(ck), "trainer_state.json")) as f:
        loop = json.load(f)["loop"]
    assert loop["stopped"] is True and loop["finished"] is True and loop["global_step"] == 5
    tr2 = sft(logging_steps=1)
    r2 = tr2.huan_luyen(tiny(), SFT_DATA, tiep_tuc_tu=ck)
    assert r2["global_step"] == 5 and r2["history"] == r["history"] and tr2.thong_ke()["dung_som"] is True


def test_dpo_and_reward_resume_in_process(tmp_path):
    def dpo_run(**kw):
        m = tiny()
        tr = DPOTrainer(so_vong=2, kich_thuoc_batch=2, toc_do_hoc=1e-3, gradient_accumulation=1, logging_steps=2)
        return m, tr.huan_luyen(m, None, PREF, **kw)

    m_ref, r_ref = dpo_run()
    dpo_run(thu_muc_checkpoint=tmp_path / "d", luu_moi=5, giu_lai=5)
    for step, path in list_checkpoints(tmp_path / "d"):
        m, r = dpo_run(tiep_tuc_tu=path)
        assert same_weights(m, m_ref) and r["history"] == r_ref["history"], step
    with open(os.path.join(path, "trainer_state.json")) as f:
        ref_logps = json.load(f)["extra"]["ref_logps"]
    assert len(ref_logps) == len(PREF) and all(c < 0 and r < 0 for c, r in ref_logps)

    data = [{"chosen": p["chosen"], "rejected": p["rejected"]} for p in PREF]

    def rm_run(**kw):
        m = tiny()
        return m, RewardModel(toc_do_hoc=1e-3, kich_thuoc_batch=3, logging_steps=1).huan_luyen(m, data, so_vong=2, **kw)

    m_ref, r_ref = rm_run()
    rm_run(thu_muc_checkpoint=tmp_path / "r", luu_moi=3)
    (step, path), = list_checkpoints(tmp_path / "r")[:1]
    m, r = rm_run(tiep_tuc_tu=path)
    assert step == 6 and m.has_score_head
    assert same_weights(m, m_ref) and r["history"] == r_ref["history"]
    assert r["final_accuracy"] == r_ref["final_accuracy"]


def test_llama_model_resumes_bit_identical(tmp_path):
    from vietnamese_ai_ref.models.llama import LlamaConfig, LlamaLM

    def llama():
        return LlamaLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64, attention_dropout=0.1))

    def run(**kw):
        m = llama()
        tr = sft()
        tr.huan_luyen(m, SFT_DATA, **kw)
        return m, tr.lay_lich_su()

    m_ref, h_ref = run()
    run(thu_muc_checkpoint=tmp_path / "ck", luu_moi=5)
    path = list_checkpoints(tmp_path / "ck")[0][1]
    assert path.endswith("checkpoint-00000010")
    m, h = run(tiep_tuc_tu=path)
    assert same_weights(m, m_ref) and h == h_ref


# ---------------------------------------------------------------------------------------------
# Ctrl-C
# ---------------------------------------------------------------------------------------------

def test_ctrl_c_saves_into_thu_muc_checkpoint_and_resumes(tmp_path):
    m_ref, r_ref, h_ref = reference_run()
    ck = tmp_path / "ck"

    def cb(entry):
        if entry["step"] == 6:
            send_sigint()  # deferred to the end of the step, then KeyboardInterrupt

    m = tiny()
    with pytest.raises(KeyboardInterrupt) as ei:
        sft().huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck, luu_moi=4, callback=cb)
    path = ei.value.checkpoint_path
    assert path == str(ck / "checkpoint-00000006")
    assert [s for s, _ in list_checkpoints(ck)] == [4, 6]
    m2 = tiny()
    tr = sft()
    tr.huan_luyen(m2, SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=ck, luu_moi=4, tiep_tuc_tu=path)
    assert same_weights(m2, m_ref) and tr.lay_lich_su() == h_ref


def test_ctrl_c_in_the_middle_of_an_accumulation_window(tmp_path, monkeypatch):
    """SIGINT during the 2nd micro-batch of step 5: the window is abandoned; the checkpoint is step 4's."""
    m_ref, _, h_ref = reference_run()
    calls = {"n": 0}
    real = losses.sft_loss

    def counting(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 11:  # 4 steps x 2 micro-batches + 2 eval batches: call 11 is the first of step 5
            send_sigint()
        return real(*a, **kw)

    monkeypatch.setattr(losses, "sft_loss", counting)
    with pytest.raises(KeyboardInterrupt) as ei:
        sft().huan_luyen(tiny(), SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=tmp_path / "ck")
    assert calls["n"] == 11  # stopped right after that micro-batch
    assert ei.value.checkpoint_path.endswith("checkpoint-00000004")
    monkeypatch.setattr(losses, "sft_loss", real)
    m = tiny()
    tr = sft()
    tr.huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], tiep_tuc_tu=ei.value.checkpoint_path)
    assert same_weights(m, m_ref) and tr.lay_lich_su() == h_ref


def test_ctrl_c_mid_window_without_checkpoint_options_resumes_bit_identical(tmp_path, monkeypatch):
    """No checkpoint directory: the interrupt's checkpoint (./checkpoint-interrupted) carries the dropout
    RNG of the last committed step, not of the moment of the interrupt (the abandoned micro-batch drew
    dropout masks), so the resumed run redoes step 5 with the same masks and ends bit-identical."""
    monkeypatch.chdir(tmp_path)
    m_ref, _, h_ref = reference_run()
    calls = {"n": 0}
    real = losses.sft_loss

    def counting(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 11:  # the first micro-batch of step 5 (after 8 training and 2 eval calls)
            send_sigint()
        return real(*a, **kw)

    monkeypatch.setattr(losses, "sft_loss", counting)
    with pytest.raises(KeyboardInterrupt) as ei:
        sft().huan_luyen(tiny(), SFT_DATA, du_lieu_val=SFT_DATA[:3])
    assert ei.value.checkpoint_path == str(tmp_path / INTERRUPT_DIR / "checkpoint-00000004")
    monkeypatch.setattr(losses, "sft_loss", real)
    m = tiny()
    tr = sft()
    tr.huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], tiep_tuc_tu=ei.value.checkpoint_path)
    assert same_weights(m, m_ref) and tr.lay_lich_su() == h_ref


def test_ctrl_c_without_directory_uses_checkpoint_interrupted(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for stop_at in (3, 2):  # a second interrupted run replaces the first one's checkpoint
        def cb(entry, stop_at=stop_at):
            if entry["step"] == stop_at:
                send_sigint()

        with pytest.raises(KeyboardInterrupt) as ei:
            sft(logging_steps=1).huan_luyen(tiny(), SFT_DATA, callback=cb)
        assert ei.value.checkpoint_path == str(tmp_path / INTERRUPT_DIR / f"checkpoint-{stop_at:08d}")
        assert "tiep_tuc_tu=" in capsys.readouterr().err
    assert os.listdir(tmp_path / INTERRUPT_DIR) == ["checkpoint-00000002"]


def test_ctrl_c_before_first_step_and_forced_second_ctrl_c_save_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real = losses.sft_loss

    def first_call(*a, **kw):
        send_sigint()
        return real(*a, **kw)

    monkeypatch.setattr(losses, "sft_loss", first_call)
    with pytest.raises(KeyboardInterrupt) as ei:
        sft().huan_luyen(tiny(), SFT_DATA)
    assert getattr(ei.value, "checkpoint_path", None) is None
    monkeypatch.setattr(losses, "sft_loss", real)

    def twice(entry):
        if entry["step"] == 2:
            send_sigint()
            send_sigint()  # the second one interrupts at once: the state may be torn, nothing is saved

    with pytest.raises(KeyboardInterrupt) as ei:
        sft(logging_steps=1).huan_luyen(tiny(), SFT_DATA, callback=twice)
    assert getattr(ei.value, "checkpoint_path", None) is None
    assert not os.path.exists(tmp_path / INTERRUPT_DIR)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_ctrl_c_during_the_final_save_is_not_lost(tmp_path, monkeypatch):
    """SIGINT while the final checkpoint is being written: the write completes, then KeyboardInterrupt."""
    def hook(phase, step):
        if (phase, step) == ("model", 12):
            send_sigint()

    monkeypatch.setattr(checkpointing, "_write_hook", hook)
    m_ref, _, h_ref = reference_run()
    m = tiny()
    with pytest.raises(KeyboardInterrupt) as ei:
        sft().huan_luyen(m, SFT_DATA, du_lieu_val=SFT_DATA[:3], thu_muc_checkpoint=tmp_path / "ck")
    assert ei.value.checkpoint_path == str(tmp_path / "ck" / "checkpoint-00000012")
    assert same_weights(m, m_ref)
    assert load_checkpoint(tmp_path / "ck").state["loop"]["finished"] is True


def test_cli_ctrl_c_prints_how_to_resume(tmp_path, monkeypatch, capsys):
    from vietnamese_ai_ref.app import cli

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SFT_DATA), encoding="utf-8")
    real_call = cli.Progress.__call__

    def progress(self, info):
        if info["step"] == 2:
            send_sigint()
        return real_call(self, info)

    monkeypatch.setattr(cli.Progress, "__call__", progress)
    rc = cli.main(["sft", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet", "--n-layer", "1",
                   "--n-embd", "16", "--n-head", "2", "--n-positions", "64", "--so-vong", "1"])
    err = capsys.readouterr().err
    assert rc == 130
    # the checkpoint goes inside the run's partial folder, never into the working directory
    path = str(tmp_path / "run.partial" / "checkpoints" / "checkpoint-00000002")
    assert path in err and f"--resume {tmp_path / 'run.partial'}" in err
    assert load_checkpoint(path).global_step == 2
    assert not (tmp_path / INTERRUPT_DIR).exists() and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# non-finite guard and bo_qua_batch_loi
# ---------------------------------------------------------------------------------------------

def nan_weights(model, name, rows):
    sd = model.state_dict()
    sd[name][rows] = np.nan
    model.load_state_dict(sd)
    return model


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_weights_raise_naming_step_and_records_weights_unchanged():
    m = nan_weights(tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0), "h.0.mlp.c_fc.bias", slice(0, 1))
    before = weights(m)
    tr = sft(kich_thuoc_batch=3, gradient_accumulation=1)
    with pytest.raises(NonFiniteError) as ei:
        tr.huan_luyen(m, SFT_DATA)
    msg = str(ei.value)
    order = np.random.default_rng([5, 0]).permutation(16).tolist()
    assert "bước 1" in msg and "step 1" in msg and f"{sorted(order[:3])}" in msg
    assert isinstance(ei.value, FloatingPointError)
    after = weights(m)
    assert all(np.array_equal(before[k], after[k], equal_nan=True) for k in before)
    assert tr.thong_ke()["da_huan_luyen"] is False


LONG = {"input_ids": [257] + list(range(30, 60))}  # 31 tokens: reaches the NaN rows of wpe (>= 20)
SHORT = [{"input_ids": [257] + [10 + i + j for j in range(6)]} for i in range(6)]  # 7 tokens each


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_bad_record_raises_or_is_skipped_with_bo_qua_batch_loi():
    data = SHORT[:2] + [LONG] + SHORT[2:]
    base = nan_weights(tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0), "wpe.weight", slice(20, None))
    kw = dict(so_vong=2, kich_thuoc_batch=1, gradient_accumulation=1, logging_steps=1, seed=1)
    m = base.copy()
    with pytest.raises(NonFiniteError) as ei:
        sft(**kw).huan_luyen(m, data)
    assert "bước 5" in str(ei.value) and "[2]" in str(ei.value)  # record 2 is 5th in epoch 0's order
    four = base.copy()  # the same run stopped after step 4: the failing step 5 changed nothing
    sft(**kw).huan_luyen(four, data, callback=lambda e: e["step"] < 4)
    w4, wm = weights(four), weights(m)
    assert all(np.array_equal(w4[k], wm[k], equal_nan=True) for k in w4)

    tr = sft(**kw)
    r = tr.huan_luyen(base, data, bo_qua_batch_loi=True)
    st = tr.thong_ke()
    assert st["so_buoc_bo_qua"] == 2 and r["global_step"] == 14 == st["tong_so_buoc"]  # skipped steps still count
    h = tr.lay_lich_su()
    assert h["step"] == [1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 14]  # nothing logged for the skipped steps
    assert all(math.isfinite(v) for v in h["train_loss"] + h["grad_norm"])
    assert np.isfinite(weights(base)["wte.weight"]).all()
    with pytest.raises(ValueError, match="bo_qua_batch_loi"):
        sft().huan_luyen(tiny(), SFT_DATA, bo_qua_batch_loi=1)


# ---------------------------------------------------------------------------------------------
# the pipeline
# ---------------------------------------------------------------------------------------------

def test_pipeline_stage_subdirectories_and_resume(tmp_path):
    def pipe():
        p = RLHFPipeline(sft_config={"so_vong": 1, "toc_do_hoc": 3e-3, "kich_thuoc_batch": 4, "gradient_accumulation": 1},
                         dpo_config={"so_vong": 1, "toc_do_hoc": 1e-3, "gradient_accumulation": 1},
                         reward_config={"toc_do_hoc": 2e-3, "so_vong": 1}, thu_muc_checkpoint=tmp_path / "ck",
                         luu_moi=2)
        p.so_token_sinh = 4
        return p

    models = lambda: (tiny(embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0),  # noqa: E731
                      tiny(seed=1, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))
    m, rm = models()
    r = pipe().chay_day_du(m, None, rm, SFT_DATA, PREF)
    assert sorted(os.listdir(tmp_path / "ck")) == ["dpo", "reward", "sft"]
    assert [s for s, _ in list_checkpoints(tmp_path / "ck" / "sft")] == [2, 4]
    assert [s for s, _ in list_checkpoints(tmp_path / "ck" / "dpo")] == [4, 6]
    with pytest.raises(CheckpointError, match="tiep_tuc_tu"):
        pipe().chay_day_du(*models()[:1], None, models()[1], SFT_DATA, PREF)  # a fresh run never mixes with old checkpoints
    m2, rm2 = models()
    r2 = pipe().chay_day_du(m2, None, rm2, SFT_DATA, PREF, tiep_tuc=True)  # every stage finished: restored
    assert same_weights(m2, m) and same_weights(rm2, rm)
    for k in ("policy_reward_before", "policy_reward_after", "policy_reward_delta"):
        assert r2[k] == r[k]
    for stage in ("sft", "reward", "rlhf"):
        assert r2[stage]["history"] == r[stage]["history"]
    assert checkpointing.tim_checkpoint(tmp_path / "ck" / "reward").endswith("checkpoint-00000003")
