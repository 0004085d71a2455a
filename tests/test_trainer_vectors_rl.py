"""The spec 1.1 GRPO and RLOO trainer vectors (spec/vectors/trainer_{grpo,rloo}.json, spec/rl.md §11).

What it is for: the vectors were computed by the reference (`reference_trainer_run`: the trainers'
`_prepare` and `_micro_step` on the vector's fixed rollouts). Here (1) the vector's rollouts are laid
out exactly as the real trainers lay out theirs (prompt order, prompt ids, collation); (2) the REAL
GRPOTrainer / RLOOTrainer.huan_luyen, with the sampler replaced by the vector's completions and a
reward function returning its rewards, reproduce every number (history, step-1 gradients, final
weights); (3) an independent plain-torch implementation from TRL's formulas (examples/torch_adapter.py,
written without this package's code) agrees to rounding; (4) plausible bugs in that implementation —
population std, 1e-8 instead of 1e-4, the temperature forgotten, the KL's sign, the dapo normaliser per
micro-batch, RLOO's baseline including the row itself or the KL left out of the reward — FAIL.
What it is not: the regeneration check of the files (tests/test_vectors.py) nor the RL function vectors
(tests/test_rl_vectors.py, tests/test_rl_losses_torch.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import vietnamese_ai_ref.trainers.loop as loop_mod
import vietnamese_ai_ref.trainers.online as online_mod
from vietnamese_ai_ref import GRPOTrainer, RLOOTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.conformance import runner as C
from vietnamese_ai_ref.conformance.reference import rollout_items
from vietnamese_ai_ref.core.optim import AdamW
from vietnamese_ai_ref.models.sampling import Rollout
from vietnamese_ai_ref.text.tokenizer import ByteTokenizer
from vietnamese_ai_ref.trainers.online import completion_batch, prepare_prompts
from vietnamese_ai_ref.trainers.settings import epoch_order

from test_trainer_vectors import TIGHT, _close, _model, _patched_torch_source, torch_adapter  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))
KINDS = ("grpo", "rloo")
CLASSES = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}


def _case(kind):
    entry = next(e for e in MANIFEST["trainer_vectors"]["files"] if e["trainer"] == kind)
    obj = json.loads((VEC / entry["file"]).read_text(encoding="utf-8"))
    assert obj["format"] == C.TRAINER_FORMAT and obj["spec_version"] == entry["spec_version"] == "1.1"
    return obj["cases"][0]


CASES = {k: _case(k) for k in KINDS}
INPUTS = {k: C.decode(CASES[k]["inputs"]) for k in KINDS}
EXPECTED = {k: C.decode(CASES[k]["expected"]) for k in KINDS}
NOISE = {k: tuple(CASES[k].get("quantity_tolerances", {})) for k in KINDS}


def _trainer(kind):
    cls, tc = CLASSES[kind], INPUTS[kind]["trainer_config"]
    return cls(**{k: tc[k] for k in cls.SETTINGS if k in tc})


# ---------------------------------------------------------------------------------------------
# the vector's rollouts are the trainers' layout
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_rollouts_are_laid_out_as_the_trainers_lay_them_out(kind):
    inputs = INPUTS[kind]
    tc, mbs = inputs["trainer_config"], inputs["micro_batches"]
    G, per_mb = tc["num_generations"], tc["kich_thuoc_batch"] // tc["num_generations"]
    prompts = [r["prompt"] for r in inputs["records"]]
    with use_backend("numpy", "float64"):
        examples, _ = prepare_prompts(prompts, ByteTokenizer(), tc["max_seq_length"] - tc["max_completion_length"])
        order = epoch_order(len(prompts), tc["seed"], 0)
        # the shared loop's prompt order, in micro-batches of kich_thuoc_batch / G prompts, G rows each
        rows = [int(i) for mb in mbs for i in mb["example_indices"]]
        assert rows == [p for p in order for _ in range(G)]
        assert inputs["windows"] == [[0, 1], [2, 3]] and all(len(mb["example_indices"]) == per_mb * G for mb in mbs)
        for mb in mbs:
            items = rollout_items(mb)
            for e in items:
                assert e["prompt_ids"] == examples[e["index"]]["prompt_ids"]
                assert len(e["completion_ids"]) <= tc["max_completion_length"]
            ids, att, _, cmask = completion_batch(items, inputs["model_config"]["pad_token_id"])  # the trainers' collation
            np.testing.assert_array_equal(ids, mb["input_ids"])
            np.testing.assert_array_equal(att, mb["attention_mask"])
            np.testing.assert_array_equal(cmask, mb["completion_mask"])
    assert len(inputs["rewards"]) == 2 and all(r.shape == (per_mb * G * 2,) for r in inputs["rewards"])
    assert np.isnan(np.concatenate(inputs["rewards"])).sum() == 1


# ---------------------------------------------------------------------------------------------
# the real trainers reproduce the vectors
# ---------------------------------------------------------------------------------------------

def _vector_rollouts(inputs):
    """Per step: (prompt ids in row order, Rollout of the vector's completions, rewards as a list)."""
    out = []
    for w, rewards in zip(inputs["windows"], inputs["rewards"]):
        items = [e for i in w for e in rollout_items(inputs["micro_batches"][i])]
        T = max(len(e["completion_ids"]) for e in items)
        ids = np.full((len(items), T), inputs["model_config"]["pad_token_id"], dtype=np.int64)
        mask = np.zeros((len(items), T), dtype=np.int64)
        for b, e in enumerate(items):
            ids[b, :len(e["completion_ids"])] = e["completion_ids"]
            mask[b, :len(e["mask"])] = e["mask"]
        eos = inputs["model_config"]["eos_token_id"]
        has_eos = np.array([e["completion_ids"][-1] == eos for e in items])
        lengths = np.array([len(e["completion_ids"]) for e in items], dtype=np.int64)
        rows = [e["prompt_ids"] for e in items]
        out.append((rows, Rollout(ids, mask, has_eos, lengths), [None if r != r else float(r) for r in rewards]))
    return out


def _run_real_trainer(kind, monkeypatch):
    inputs = INPUTS[kind]
    G = inputs["trainer_config"]["num_generations"]
    steps = _vector_rollouts(inputs)
    seen, calls = {}, []

    class RecordingAdamW(AdamW):
        def grad_norm(self):
            if "grads" not in seen:
                seen["grads"] = {name: np.array(g.grad[a:b]).reshape(p.data.shape) for g in self.groups
                                 for name, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:])}
            return super().grad_norm()

    def vector_sampler(model, prompt_ids, *, num_generations, rollout_index, **kw):
        rows, rollout, _ = steps[rollout_index]
        assert num_generations == G and [list(p) for p in prompt_ids] == rows[::G]  # the vector's prompts, in order
        return rollout

    def vector_rewards(prompts, completions, **columns):
        if completions == [""]:  # the probe before any compute
            return [0.0]
        calls.append(len(calls))
        return steps[len(calls) - 1][2]

    monkeypatch.setattr(loop_mod, "AdamW", RecordingAdamW)
    monkeypatch.setattr(online_mod, "sample_rollouts", vector_sampler)
    model, trainer = _model(inputs), _trainer(kind)
    result = trainer.huan_luyen(model, inputs["records"], vector_rewards, tokenizer=ByteTokenizer())
    assert calls == [0, 1]
    return trainer, result, model, seen


@pytest.mark.parametrize("kind", KINDS)
def test_real_trainer_reproduces_the_vector(kind, monkeypatch):
    exp = EXPECTED[kind]
    with use_backend("numpy", "float64"):
        trainer, result, model, seen = _run_real_trainer(kind, monkeypatch)
    assert result["global_step"] == 2
    h = trainer.lay_lich_su()
    for key, name in (("train_loss", "loss_trajectory"), ("learning_rate", "learning_rates"),
                      ("grad_norm", "grad_norms"), ("kl", "kl")):
        _close(h[key], exp[name], key)
    _close(h["train_loss"][0], exp["loss"], "loss")
    _close(h["grad_norm"][0], exp["grad_norm"], "grad_norm")
    assert set(seen["grads"]) == set(exp["grads"])
    for name, g in exp["grads"].items():
        _close(seen["grads"][name], g, f"grads.{name}")
    final = model.state_dict()
    assert list(final) == list(exp["parameters_after"])
    for name, w in exp["parameters_after"].items():
        noisy = f"parameters_after.{name}" in NOISE[kind]  # gradient mathematically 0 (spec/vectors/README.md)
        _close(final[name], w, f"parameters_after.{name}", {"rtol": 1e-12, "atol": 1e-10} if noisy else TIGHT)
    # the logged reward is the mean of the scorable rewards of each step (NaN left out)
    _close(h["reward"], [np.nanmean(r) for r in INPUTS[kind]["rewards"]], "reward")


def test_vectors_exercise_what_they_claim():
    for kind in KINDS:
        exp, tc = EXPECTED[kind], INPUTS[kind]["trainer_config"]
        assert exp["kl"][0] == 0.0 and exp["kl"][1] > 1e-3  # policy = reference at step 1 only
        assert exp["grad_norms"][0] > tc["gradient_clip"]  # clipping active at step 1
        assert list(exp["learning_rates"]) == [tc["toc_do_hoc"], tc["toc_do_hoc"] / 2]
        assert tc["temperature"] != 1.0 and tc["beta"] > 0
    adv = EXPECTED["grpo"]["advantages"]
    assert (adv == 0.0).sum() == 4  # a zero-std group (3 rows) and the NaN reward
    # a truncated GRPO completion is fully masked (mask_truncated_completions): it contributes nothing
    cm = INPUTS["grpo"]["micro_batches"]
    assert any(not row.any() for mb in cm for row in mb["completion_mask"])
    # the window's micro-batches hold different token counts (dapo's N is the window's)
    counts = [int(cm[i]["completion_mask"].sum()) for i in INPUTS["grpo"]["windows"][0]]
    assert counts[0] != counts[1]


# ---------------------------------------------------------------------------------------------
# the independent torch implementation, and what the vectors catch
# ---------------------------------------------------------------------------------------------

@pytest.mark.torch  # the `torch_adapter` fixture skips where torch is missing
@pytest.mark.parametrize("kind", KINDS)
def test_torch_implementation_agrees_to_rounding(kind, torch_adapter):
    case = CASES[kind]
    got = torch_adapter.run_trainer_vector(C.decode(case["inputs"]))
    rows = []
    C._run_trainer_case(torch_adapter, case, 1e-10, 1e-12, rows)
    assert rows[0].status == "OK", rows[0].detail
    errors = C.trainer_errors(got, case)
    assert set(EXPECTED[kind]) <= set(errors)
    for q, (max_abs, _) in errors.items():
        assert max_abs < (1e-9 if q in NOISE[kind] else 1e-12), (q, max_abs)


BUGS = {
    "grpo_population_std": ("grpo", ("x.std(unbiased=True)", "x.std(unbiased=False)")),
    "grpo_eps_1e-8": ("grpo", ("(std + 1e-4)", "(std + 1e-8)")),
    "grpo_temperature_forgotten": ("grpo", ('[:, :-1] / temp', '[:, :-1]')),
    "grpo_kl_reversed": ("grpo", ("d = ref[i] - lp", "d = lp - ref[i]")),
    "grpo_dapo_per_micro_batch": ("grpo", ("* m).sum() / max(N, 1.0)", "* m).sum() / max(float(m.sum()), 1.0)")),
    "rloo_baseline_includes_itself": ("rloo", ("baseline = (total - groups) / (count - 1)", "baseline = total / count")),
    "rloo_kl_not_in_reward": ("rloo", ("A = _rloo_advantages(R - beta * kl_seq, G)", "A = _rloo_advantages(R, G)")),
    "rloo_no_division_by_micro_batches": ("rloo", (".mean() / len(window)", ".mean()")),
}


@pytest.mark.torch  # the `torch_adapter` fixture skips where torch is missing
@pytest.mark.parametrize("bug", sorted(BUGS))
def test_vectors_catch_implementation_bugs(bug, torch_adapter):
    kind, (old, new) = BUGS[bug]
    wrong = _patched_torch_source(old, new)
    rows = []
    C._run_trainer_case(type("Wrong", (), {"run_trainer_vector": staticmethod(wrong)})(), CASES[kind], 1e-10, 1e-12, rows)
    assert rows[0].status == "FAIL", bug
