"""The pipeline uses its reward model (issue 17 item 4): RLHFPipeline's stage 3 as GRPO / RLOO / online DPO
with the reward model trained in stage 2 as the reward, through the API, the TOML config and the command
line; the `grpo`, `rloo`, `online-dpo` commands; bad methods and keys refused before any compute; the
pipeline's GRPO stage killed (SIGKILL) and resumed ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from vietnamese_ai_ref import GRPOTrainer, OnlineDPOTrainer, RewardModel, RLHFPipeline, RLOOTrainer, SFTTrainer
from vietnamese_ai_ref.core.errors import SettingError
from vietnamese_ai_ref.io.checkpoints import list_checkpoints
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

WORKER = os.path.join(os.path.dirname(__file__), "_cli_worker.py")
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", VIETNAMESE_AI_BACKEND="numpy")
ENV.pop("VIETNAMESE_AI_DTYPE", None)

SFT = [{"instruction": f"Tính {a} + {b}", "output": f"{a + b}."} for a in range(3) for b in range(3)]
PREF = [{"prompt": f"Tính {a} + 1", "chosen": f"Dạ, {a + 1} ạ.", "rejected": "Không biết."} for a in range(4)]
PREF += [dict(PREF[0], rejected="Sai.")]  # a repeated prompt: stage 3 sees each prompt once
PROMPTS = [f"Tính {a} + 1" for a in range(4)]
SFT_CFG = {"so_vong": 1, "toc_do_hoc": 3e-3, "kich_thuoc_batch": 16}
RM_CFG = {"toc_do_hoc": 2e-3, "kich_thuoc_batch": 8}
RL_CFG = {
    "grpo": dict(kich_thuoc_batch=4, num_generations=2, toc_do_hoc=1e-2, max_completion_length=6, logging_steps=1),
    "rloo": dict(kich_thuoc_batch=4, num_generations=2, toc_do_hoc=1e-2, max_completion_length=6, logging_steps=1),
    "online_dpo": dict(kich_thuoc_batch=2, toc_do_hoc=1e-2, max_completion_length=6, logging_steps=1),
}
TRAINERS = {"grpo": GRPOTrainer, "rloo": RLOOTrainer, "online_dpo": OnlineDPOTrainer}


def tiny(seed=0):
    return TransformerLM(GPTConfig(n_layer=1, n_embd=16, n_head=2, n_positions=64, seed=seed))


def weights(model):
    return {k: p.numpy().copy() for k, p in model.named_parameters().items()}


def pipeline(method, **kw):
    p = RLHFPipeline(sft_config=SFT_CFG, reward_config=RM_CFG, phuong_phap=method, rl_config=RL_CFG[method], **kw)
    p.so_token_sinh = 6
    return p


# ---------------------------------------------------------------------------------------------
# the API
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["grpo", "rloo", "online_dpo"])
def test_stage3_is_the_online_trainer_with_the_stage2_reward_model(method, tmp_path):
    """The pipeline's stage 3 equals the online trainer run by hand on the SFT policy with the trained
    reward model and the distinct prompts: same history, same final weights; the policy moved."""
    policy, rm = tiny(), tiny(seed=1)
    r = pipeline(method, thu_muc_checkpoint=tmp_path).chay_day_du(policy, None, rm, SFT, PREF)
    # by hand
    sft_policy, rm2 = tiny(), tiny(seed=1)
    SFTTrainer(**SFT_CFG).huan_luyen(sft_policy, SFT)
    RewardModel(**RM_CFG).huan_luyen(rm2, PREF, so_vong=1)
    after_sft = weights(sft_policy)
    by_hand = TRAINERS[method](**RL_CFG[method]).huan_luyen(sft_policy, PROMPTS, reward_model=rm2)
    assert r["rlhf"]["history"] == by_hand["history"] and r["rlhf"]["global_step"] == by_hand["global_step"] > 0
    got = weights(policy)
    assert all(np.array_equal(got[k], v) for k, v in weights(sft_policy).items())
    assert max(float(np.abs(got[k] - after_sft[k]).max()) for k in got) > 1e-4  # stage 3 moved the policy
    assert r["phuong_phap"] == method and isinstance(r["rlhf"]["final_reward"], float)
    assert r["policy_reward_delta"] == pytest.approx(r["policy_reward_after"] - r["policy_reward_before"])
    assert np.isfinite([r["policy_reward_before"], r["policy_reward_after"]]).all()
    assert sorted(os.listdir(tmp_path)) == sorted(["sft", "reward", method])
    assert list_checkpoints(tmp_path / method)[-1][0] == by_hand["global_step"]


def test_thong_ke_lay_ket_qua_and_extra_reward_functions():
    def ngan(prompts, completions, **cot):
        return [1.0 / (1 + len(c)) for c in completions]

    pipe = pipeline("grpo")
    assert pipe.thong_ke()["phuong_phap"] == "grpo" and "phuong_phap" not in pipe.lay_ket_qua()
    r = pipe.chay_day_du(tiny(), None, tiny(seed=1), SFT, PREF, ham_thuong=ngan, trong_so_thuong=[2.0, 1.0])
    st = pipe.thong_ke()
    assert st["rlhf_done"] and st["rl_trainer"]["cau_hinh"]["num_generations"] == 2
    assert st["rl_trainer"]["global_step"] == r["rlhf"]["global_step"] == 2  # 4 prompts, 2 per step
    assert st["dpo_trainer"]["da_huan_luyen"] is False and pipe.lay_ket_qua()["phuong_phap"] == "grpo"
    h = r["rlhf"]["history"]
    for i, total in enumerate(h["reward"]):  # R = 2·ngan + 1·reward_model
        assert total == pytest.approx(2.0 * h["rewards/ngan/mean"][i] + h["rewards/reward_model/mean"][i], rel=1e-9)


@pytest.mark.parametrize("kw,fragments", [
    (dict(phuong_phap="ppo"), ["'phuong_phap'", "dpo, grpo, rloo, online_dpo"]),
    (dict(phuong_phap="grpo", rl_config={"num_generation": 2}), ["'rl_config'", "num_generation"]),
    (dict(phuong_phap="grpo", rl_config={"kich_thuoc_batch": 3, "num_generations": 2}), ["'kich_thuoc_batch'"]),
    (dict(rl_config={"beta": 0.1}), ["'rl_config'", "'grpo', 'rloo', 'online_dpo'"]),
    (dict(phuong_phap="rloo", dpo_config={"beta": 0.1}), ["'dpo_config'", "'dpo'"]),
])
def test_bad_method_and_configs_refused_at_construction(kw, fragments):
    with pytest.raises(SettingError) as e:
        RLHFPipeline(**kw)
    for f in fragments:
        assert f in str(e.value), str(e.value)


def words(prompts, completions, **cot):
    return ["tốt"] * len(completions)  # not numbers: the probe before any compute sees it


@pytest.mark.parametrize("method,kw,fragment", [
    ("grpo", dict(rl_config=dict(RL_CFG["grpo"], max_completion_length=63)), "'max_completion_length'"),
    ("grpo", dict(ham_thuong=words), "reward function 'words' returned element [0] = 'tốt'"),
    ("rloo", dict(trong_so_thuong=[1.0, 1.0]), "'trong_so_thuong' must be a list of 1"),
    ("dpo", dict(ham_thuong=words), "['ham_thuong'] only apply to phuong_phap"),
])
def test_stage3_problems_refused_before_any_compute(method, kw, fragment):
    rl = kw.pop("rl_config", RL_CFG.get(method))
    pipe = RLHFPipeline(sft_config=SFT_CFG, phuong_phap=method, rl_config=rl)
    policy = tiny()
    before = weights(policy)
    with pytest.raises(SettingError) as e:
        pipe.chay_day_du(policy, None, tiny(seed=1), SFT, PREF, **kw)
    assert fragment in str(e.value), str(e.value)
    assert not pipe.thong_ke()["sft_done"] and all(np.array_equal(before[k], v) for k, v in weights(policy).items())


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------

def cli(*args):
    return subprocess.run([sys.executable, "-m", "vietnamese_ai_ref", *map(str, args)], capture_output=True,
                          text=True, env=ENV, timeout=300)


def worker(*fault, cli_args):
    return subprocess.run([sys.executable, WORKER, *map(str, fault), "--", *map(str, cli_args)],
                          capture_output=True, text=True, env=ENV, timeout=300)


def error_line(p, code=2) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("lỗi / error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


TOML_HEAD = ('[model]\nn_layer = 1\nn_embd = 16\nn_head = 2\nn_positions = 64\nseed = 0\n'
             '[data]\nsft = "sft.jsonl"\npreference = "pref.jsonl"\n'
             '[sft]\nso_vong = 1\ntoc_do_hoc = 3e-3\nkich_thuoc_batch = 16\n'
             '[reward]\nso_vong = 1\ntoc_do_hoc = 2e-3\nkich_thuoc_batch = 8\n')
GRPO_TABLE = ('[grpo]\nkich_thuoc_batch = 2\nnum_generations = 2\ntoc_do_hoc = 1e-2\nmax_completion_length = 6\n'
              'beta = 0.05\nlogging_steps = 1\n')


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The pipeline's data and configs; a policy folder, a trained reward-model folder, a prompts file."""
    d = tmp_path_factory.mktemp("pipeline-rl")
    write_jsonl(d / "sft.jsonl", SFT)
    write_jsonl(d / "pref.jsonl", PREF)
    write_jsonl(d / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    (d / "grpo.toml").write_text('method = "grpo"\n' + TOML_HEAD + GRPO_TABLE, encoding="utf-8")
    (d / "no-method.toml").write_text(TOML_HEAD + GRPO_TABLE, encoding="utf-8")
    tiny().save(d / "policy")
    rm = tiny(seed=1)
    RewardModel(**RM_CFG).huan_luyen(rm, PREF)
    rm.save(d / "rm")
    return d


def test_pipeline_toml_grpo_writes_a_finished_run(files, tmp_path):
    out = tmp_path / "run"
    p = cli("pipeline", "--config", files / "grpo.toml", "--quiet", "--out", out)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl", "policy", "reward_model", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["phuong_phap"] == "grpo" and s["rlhf"]["global_step"] == 4 and isinstance(s["policy_reward_delta"], float)
    assert "history" not in s["rlhf"] and isinstance(s["rlhf"]["final_reward"], float)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    stage3 = [r for r in rows if r["stage"] == "rlhf"]
    assert [r["step"] for r in stage3] == [1, 2, 3, 4] and all("rewards/reward_model/mean" in r for r in stage3)
    assert all(r["kl"] >= 0.0 for r in stage3[1:])  # beta = 0.05: the frozen SFT policy is the reference
    assert json.loads((out / "config.json").read_text())["method"] == "grpo"


def test_method_flag_selects_the_table_and_mismatches_are_named(files, tmp_path):
    line = error_line(worker("--kill-after-step", "1", cli_args=["pipeline", "--config", files / "no-method.toml",
                                                                  "--quiet", "--out", tmp_path / "a"]))
    assert '[grpo] is only for method = "grpo"' in line and '"dpo"' in line
    p = cli("pipeline", "--config", files / "no-method.toml", "--method", "grpo", "--quiet", "--out", tmp_path / "b")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["phuong_phap"] == "grpo"
    p = cli("pipeline", "--config", files / "grpo.toml", "--method", "ppo", "--quiet")
    assert p.returncode == 2 and "--method" in p.stderr and "'ppo'" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("toml,fragment", [
    ('method = "ppo"\n' + TOML_HEAD, "invalid method 'ppo'; valid: ['dpo', 'grpo', 'rloo', 'online_dpo']"),
    ('method = "grpo"\n' + TOML_HEAD + GRPO_TABLE + "num_generation = 2\n", "unknown keys ['num_generation']"),
    ('method = "grpo"\n' + TOML_HEAD + GRPO_TABLE + '[dpo]\nbeta = 0.1\n', '[dpo] is only for method = "dpo"'),
    ('method = "grpo"\n' + TOML_HEAD + "[grpo]\nmax_completion_length = 63\n", "'max_completion_length'"),
    ("grpo = 3\n" + TOML_HEAD, "[grpo] must be a table"),
])
def test_pipeline_config_errors_exit_2_before_any_step(files, tmp_path, toml, fragment):
    cfg = files / f"bad-{abs(hash(toml))}.toml"
    cfg.write_text(toml, encoding="utf-8")
    line = error_line(worker("--kill-after-step", "1", cli_args=["pipeline", "--config", cfg, "--quiet",
                                                                  "--out", tmp_path / "never"]))
    assert fragment in line, line
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("command,extra,steps", [
    ("grpo", ["--kich-thuoc-batch", "4", "--num-generations", "2", "--beta", "0.05"], 2),
    ("rloo", ["--kich-thuoc-batch", "4", "--num-generations", "2"], 2),
    ("online-dpo", ["--kich-thuoc-batch", "2", "--missing-eos-penalty", "0.5"], 2),
])
def test_online_commands_end_to_end(files, tmp_path, command, extra, steps):
    out = tmp_path / "run"
    p = cli(command, "--model", files / "policy", "--reward-model", files / "rm", "--data", files / "prompts.jsonl",
            "--toc-do-hoc", "1e-2", "--max-completion-length", "6", "--quiet", "--out", out, *extra)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(out)) == ["config.json", "metrics.jsonl", "model", "summary.json"]
    s = json.loads((out / "summary.json").read_text())
    assert s["global_step"] == steps and isinstance(s["final_reward"], float) and s["so_buoc_bo_qua"] == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert {r["stage"] for r in rows} == {command.replace("-", "_")}
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["command"] == command and cfg["reward_model"] == str(files / "rm")
    trained = TransformerLM.load(out / "model")
    assert not all(np.array_equal(a, weights(trained)[k]) for k, a in weights(TransformerLM.load(files / "policy"))
                   .items())


@pytest.mark.parametrize("args,fragment", [
    (["--kich-thuoc-batch", "3", "--num-generations", "2"], "'kich_thuoc_batch' = 3 must be divisible"),
    (["--reward-model", "POLICY"], "has no score head"),
    (["--max-completion-length", "63"], "--max-completion-length 63"),
    (["--loss-type", "ppo"], "invalid 'loss_type'"),
    (["--data", "SFT"], "sft.jsonl: record[0]: khóa 'prompt' cần"),
])
def test_grpo_command_errors_exit_2_before_any_step(files, tmp_path, args, fragment):
    base = {"--model": files / "policy", "--reward-model": files / "rm", "--data": files / "prompts.jsonl",
            "--max-completion-length": "6"}
    subst = {"POLICY": files / "policy", "SFT": files / "sft.jsonl"}
    args = [subst.get(x, x) for x in args]
    for k in list(base):
        if k in args:
            base.pop(k)
    argv = ["grpo", *[x for kv in base.items() for x in kv], *args, "--quiet", "--out", tmp_path / "never"]
    line = error_line(worker("--kill-after-step", "1", cli_args=argv))
    assert fragment in line, line
    assert not os.listdir(tmp_path)


def test_grpo_command_needs_a_reward_model(files):
    p = cli("grpo", "--model", files / "policy", "--data", files / "prompts.jsonl")
    assert p.returncode == 2 and "--reward-model" in p.stderr.splitlines()[-1]


def test_pipeline_grpo_stage_killed_then_resumed_is_byte_identical(files, tmp_path):
    """SFT and the reward model take one step each; GRPO (β > 0: its reference is the SFT policy, checked
    by fingerprint on resume) takes four and is SIGKILLed after its third update, then resumed."""
    ref, out = tmp_path / "ref", tmp_path / "run"
    args = ["pipeline", "--config", files / "grpo.toml", "--quiet", "--checkpoint-every", "1"]
    p = cli(*args, "--out", ref)
    assert p.returncode == 0, p.stderr
    p = worker("--kill-after-step", "3", cli_args=[*args, "--out", out])
    assert p.returncode == -signal.SIGKILL, p.stderr
    ck = tmp_path / "run.partial" / "checkpoints"
    assert sorted(os.listdir(ck)) == ["grpo", "reward", "sft"] and not out.exists()
    assert [s for s, _ in list_checkpoints(ck / "grpo")] == [1, 2]
    p = cli("pipeline", "--resume", tmp_path / "run.partial", "--quiet")
    assert p.returncode == 0, p.stderr
    for name in ("policy/model.safetensors", "reward_model/model.safetensors", "metrics.jsonl"):
        assert (ref / name).read_bytes() == (out / name).read_bytes(), name
    assert json.loads((out / "summary.json").read_text())["rlhf"]["global_step"] == 4


# ---------------------------------------------------------------------------------------------
# the names agree
# ---------------------------------------------------------------------------------------------

def test_method_names_and_cli_defaults_agree_with_the_trainers():
    from vietnamese_ai_ref.app import cli as cli_module, pipeline_config
    from vietnamese_ai_ref.trainers import pipeline

    assert pipeline_config.STAGE3_METHODS == pipeline.METHODS
    for name, defaults in cli_module.ONLINE_DEFAULTS.items():
        sig = inspect.signature(TRAINERS[name.replace("-", "_")]).parameters
        assert {k: sig[k].default for k in defaults} == defaults, name
    p = cli("grpo", "--help")
    assert p.returncode == 0 and "--reward-model" in p.stdout and "--num-generations" in p.stdout


@pytest.mark.parametrize("method", ["grpo", "online_dpo"])
def test_lora_policy_reference_is_the_sft_policy_not_the_base(method):
    """With a LoRA policy and ref_model=None, the online stage's reference is the SFT policy (adapters
    included), as for DPO — not the pre-SFT base that the trainers' adapters-off rule would give."""
    from vietnamese_ai_ref import them_lora

    cfg = dict(RL_CFG[method], beta=0.2)

    def run(explicit_ref):
        policy, rm = them_lora(tiny(), r=2, lora_alpha=4, seed=3), tiny(seed=1)
        p = RLHFPipeline(sft_config=dict(SFT_CFG, so_vong=3, toc_do_hoc=5e-2), reward_config=RM_CFG, phuong_phap=method,
                         rl_config=cfg)
        p.sft(policy, SFT)
        p.train_reward_model(rm, PREF)
        ref = policy.copy() if explicit_ref else None
        assert any("lora_B" in k and np.abs(v).max() > 0 for k, v in weights(policy).items())  # SFT moved B
        return p.rlhf(policy, ref, PREF)["history"]

    assert run(False) == run(True)
