"""The end-to-end trainer vectors (spec/vectors/trainer_*.json) against the REAL trainers.

What it is for: the vectors were computed by `reference_adapter.run_trainer_vector` (the trainers'
components driven by the vector's explicit step schedule); here SFTTrainer / DPOTrainer /
RewardModel.huan_luyen themselves, given the vector's records, initial weights and hyper-parameters
(logging_steps=1), must reproduce them: their own shuffled order (training.epoch_order for the vector's
seed) is the vector's `windows`, and the per-step history, the step-1 gradients and first forward
(captured by wrapping the loop's components) and the final weights agree to 1e-12. It also holds the
independent plain-torch adapter to the measured errors that spec/vectors/README.md quotes, and shows
that plausible implementation bugs (transformers <= 4.45 accumulation, TRL's mean of micro-batch means,
no warm-up, no clipping, decay on biases, ...) FAIL the vectors.
What it is not: a check that the committed files equal the generator's output (tests/test_vectors.py).
"""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest

import vietnamese_ai_ref.trainers.dpo as dpo_mod
import vietnamese_ai_ref.trainers.reward as reward_mod
import vietnamese_ai_ref.trainers.loop as training_mod
from vietnamese_ai_ref import DPOTrainer, RewardModel, SFTTrainer
from vietnamese_ai_ref.conformance import runner as C
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.core.optim import AdamW
from vietnamese_ai_ref.text.records import pad_batch, prepare_pairs, prepare_sft
from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

ROOT = Path(__file__).resolve().parent.parent
VEC = ROOT / "spec" / "vectors"
MANIFEST = json.loads((VEC / "manifest.json").read_text(encoding="utf-8"))
KINDS = ("sft", "dpo", "reward")
TIGHT = {"rtol": 1e-12, "atol": 1e-14}  # the real trainers vs the vector (same code, other batching of the DPO reference)


def _case(kind):
    entry = next(e for e in MANIFEST["trainer_vectors"]["files"] if e["trainer"] == kind)
    obj = json.loads((VEC / entry["file"]).read_text(encoding="utf-8"))
    assert obj["format"] == C.TRAINER_FORMAT and obj["trainer"] == kind
    return obj["cases"][0]


CASES = {k: _case(k) for k in KINDS}
INPUTS = {k: C.decode(CASES[k]["inputs"]) for k in KINDS}
EXPECTED = {k: C.decode(CASES[k]["expected"]) for k in KINDS}
NOISE = {k: tuple(CASES[k].get("quantity_tolerances", {})) for k in KINDS}


def _close(actual, expected, what, tol=TIGHT):
    a, e = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    err = np.abs(a - e)
    bound = tol["atol"] + tol["rtol"] * np.abs(e)
    assert np.all(err <= bound), f"{what}: max abs err {err.max():.3e}, max rel {np.max(err / (np.abs(e) + 1e-300)):.3e}"


def _model(inputs):
    mc = inputs["model_config"]
    m = TransformerLM(GPTConfig(vocab_size=mc["vocab_size"], n_positions=mc["n_positions"], n_embd=mc["n_embd"],
                                n_layer=mc["n_layer"], n_head=mc["n_head"], layer_norm_epsilon=mc["layer_norm_epsilon"]))
    m.load_state_dict(inputs["parameters"])
    return m


def _trainer(kind, tc):
    cls = {"sft": SFTTrainer, "dpo": DPOTrainer, "reward": RewardModel}[kind]
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in tc.items() if k in names})


# ---------------------------------------------------------------------------------------------
# the vector's schedule is the trainers' own order
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_schedule_is_the_trainers_order_and_collation(kind):
    inputs = INPUTS[kind]
    tc, mc = inputs["trainer_config"], inputs["model_config"]
    tok = ByteTokenizer()
    L = min(tc["max_seq_length"], mc["n_positions"])
    with use_backend("numpy", "float64"):
        if kind == "sft":
            examples = prepare_sft(inputs["records"], tok, L, mc["vocab_size"])
        else:
            examples = prepare_pairs(inputs["records"], tok, L, require_prompt=kind == "dpo", allow_margin=kind == "reward")
        settings = training_mod.LoopSettings(epochs=tc["so_vong"], batch_size=tc["kich_thuoc_batch"],
                                             accumulation=tc["gradient_accumulation"], lr=tc["toc_do_hoc"],
                                             weight_decay=tc["weight_decay"], warmup_ratio=tc["warmup_ratio"],
                                             clip=tc["gradient_clip"], logging_steps=1, seed=tc["seed"])
        n = len(examples)
        _, _, total, warmup = training_mod.plan_steps(n, settings)
        assert (tc["total_steps"], tc["warmup_steps"]) == (total, warmup)
        mbs, windows = inputs["micro_batches"], inputs["windows"]
        flat = [list(map(int, mbs[i]["example_indices"])) for w in windows for i in w]
        assert [i for w in windows for i in w] == list(range(len(mbs)))  # consumption order, each once
        expected_batches = []
        for epoch in range(tc["so_vong"]):
            order = training_mod.epoch_order(n, tc["seed"], epoch)
            expected_batches += [order[i:i + tc["kich_thuoc_batch"]] for i in range(0, n, tc["kich_thuoc_batch"])]
        assert flat == expected_batches
    for mb, idx in zip(mbs, flat):  # collated exactly as the trainers collate (right padding, -100)
        exs = [examples[j] for j in idx]
        if kind == "sft":
            ids, mask, labels = pad_batch([e["input_ids"] for e in exs], 256, [e["labels"] for e in exs])
            np.testing.assert_array_equal(mb["input_ids"], ids)
            np.testing.assert_array_equal(mb["attention_mask"], mask)
            np.testing.assert_array_equal(mb["labels"], labels)
            continue
        for side in ("chosen", "rejected"):
            got = pad_batch([e[f"{side}_ids"] for e in exs], 256, [e[f"{side}_labels"] for e in exs])
            np.testing.assert_array_equal(mb[f"{side}_input_ids"], got[0])
            np.testing.assert_array_equal(mb[f"{side}_attention_mask"], got[1])
            if kind == "dpo":
                np.testing.assert_array_equal(mb[f"{side}_labels"], got[2])
        if kind == "reward":
            np.testing.assert_array_equal(mb["margin"], [e["margin"] for e in exs])


# ---------------------------------------------------------------------------------------------
# the real trainers reproduce the vectors
# ---------------------------------------------------------------------------------------------

def _run_real_trainer(kind, monkeypatch):
    """Run the real trainer on the vector, recording the step-1 gradients (the loop's AdamW after
    gather_grads) and the first forward of the policy (its micro_step's components)."""
    inputs = INPUTS[kind]
    tc = inputs["trainer_config"]
    seen = {}

    class RecordingAdamW(AdamW):
        def grad_norm(self):
            if "grads" not in seen:
                seen["grads"] = {name: self_grad(g, a, b, p) for g in self.groups
                                 for name, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:])}
            return super().grad_norm()

    def self_grad(g, a, b, p):
        return np.array(g.grad[a:b]).reshape(p.data.shape)

    monkeypatch.setattr(training_mod, "AdamW", RecordingAdamW)
    model = _model(inputs)
    trainer = _trainer(kind, tc)
    if kind == "sft":
        forward = model.forward

        def recording_forward(ids, attention_mask=None):
            out = forward(ids, attention_mask)
            seen.setdefault("logits", out.numpy().copy())
            return out

        monkeypatch.setattr(model, "forward", recording_forward, raising=False)
        result = trainer.huan_luyen(model, inputs["records"])
    elif kind == "dpo":
        pair_logps = dpo_mod.pair_logps
        ref_chunks = []

        def recording_pair_logps(m, examples, pad):
            c, r = pair_logps(m, examples, pad)
            if m is model:
                seen.setdefault("policy", (c.numpy().copy(), r.numpy().copy()))
            else:
                ref_chunks.append((c.numpy().copy(), r.numpy().copy()))
            return c, r

        monkeypatch.setattr(dpo_mod, "pair_logps", recording_pair_logps)
        result = trainer.huan_luyen(model, None, inputs["records"])
        ref_c = np.concatenate([c for c, _ in ref_chunks])
        ref_r = np.concatenate([r for _, r in ref_chunks])
        first = [int(j) for j in inputs["micro_batches"][0]["example_indices"]]
        seen["logps"] = {"policy_chosen": seen["policy"][0], "policy_rejected": seen["policy"][1],
                         "reference_chosen": ref_c[first], "reference_rejected": ref_r[first]}
    else:
        pair_scores = reward_mod._pair_scores

        def recording_pair_scores(m, examples, pad):
            c, r = pair_scores(m, examples, pad)
            seen.setdefault("scores", {"chosen": c.numpy().copy(), "rejected": r.numpy().copy()})
            return c, r

        monkeypatch.setattr(reward_mod, "_pair_scores", recording_pair_scores)
        result = trainer.huan_luyen(model, inputs["records"], so_vong=tc["so_vong"])
    return trainer, result, model, seen


@pytest.mark.parametrize("kind", KINDS)
def test_real_trainer_reproduces_the_vector(kind, monkeypatch):
    inputs, exp = INPUTS[kind], EXPECTED[kind]
    tc = inputs["trainer_config"]
    with use_backend("numpy", "float64"):
        trainer, result, model, seen = _run_real_trainer(kind, monkeypatch)
    T = tc["total_steps"]
    assert result["global_step"] == T
    st = trainer.thong_ke()
    assert (st["tong_so_buoc"], st["so_buoc_warmup"]) == (T, tc["warmup_steps"])
    h = trainer.lay_lich_su()
    assert h["step"] == list(range(1, T + 1))  # logging_steps = 1: one entry per optimiser step
    _close(h["train_loss"], exp["loss_trajectory"], "train_loss")
    _close(h["learning_rate"], exp["learning_rates"], "learning_rate")
    assert h["learning_rate"][0] == 0.0  # warm-up: step 1 runs at lr 0
    _close(h["grad_norm"], exp["grad_norms"], "grad_norm")
    _close(h["train_loss"][0], exp["loss"], "loss")
    _close(h["grad_norm"][0], exp["grad_norm"], "grad_norm step 1")
    stats = {"sft": (), "dpo": ("chosen_rewards", "rejected_rewards", "reward_margin"),
             "reward": ("accuracy", "reward_margin")}[kind]
    for k in stats:
        _close(h[k], exp[k], k)
    # the first forward and the step-1 gradients, recorded inside the real loop
    first = {"sft": "logits", "dpo": "logps", "reward": "scores"}[kind]
    if first == "logits":
        _close(seen["logits"], exp["logits"], "logits")
    else:
        for k, v in exp[first].items():
            _close(seen[first][k], v, f"{first}.{k}")
    assert list(seen["grads"]) and set(seen["grads"]) == set(exp["grads"])
    for name, g in exp["grads"].items():
        _close(seen["grads"][name], g, f"grads.{name}")
    # the final weights
    final = model.state_dict()
    assert list(final) == list(exp["parameters_after"])
    for name, w in exp["parameters_after"].items():
        # the noise integrators (gradient mathematically 0, see test_quantity_tolerances_are_narrow) pick
        # up rounding noise / eps: DPO's reference log-probs, computed by the trainer in dataset-order
        # chunks (other padding), move it by ~3e-13; every other parameter agrees to 1e-12
        noisy = f"parameters_after.{name}" in NOISE[kind]
        _close(final[name], w, f"parameters_after.{name}", {"rtol": 1e-12, "atol": 1e-10} if noisy else TIGHT)


# ---------------------------------------------------------------------------------------------
# the independent torch adapter, and what the vectors catch
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def torch_adapter():
    pytest.importorskip("torch")
    return C.load_adapter(str(ROOT / "examples" / "torch_adapter.py"))


@pytest.mark.parametrize("kind", KINDS)
def test_torch_adapter_within_measured_errors(kind, torch_adapter):
    case = CASES[kind]
    got = torch_adapter.run_trainer_vector(C.decode(case["inputs"]))
    rows = []
    C._run_trainer_case(torch_adapter, case, 1e-10, 1e-12, rows)
    assert rows[0].status == "OK", rows[0].detail
    errors = C.trainer_errors(got, case)
    assert set(EXPECTED[kind]) <= set(errors)
    for q, (max_abs, _) in errors.items():
        if q in NOISE[kind]:  # gradient mathematically 0: AdamW integrates rounding noise / eps (README)
            assert max_abs < 1e-9, (q, max_abs)
        else:  # everything else: rounding only (measured <= 4e-14; README quotes the numbers)
            assert max_abs < 1e-12, (q, max_abs)
    assert any(errors[q][0] > 0 for q in NOISE[kind])  # the noise is real, not an artefact of shared code


def _mutated_inputs(case, **changes):
    inputs = C.decode(case["inputs"])
    inputs["trainer_config"] = dict(inputs["trainer_config"], **changes)
    return inputs


def _patched_torch_source(old, new):
    src = (ROOT / "examples" / "torch_adapter.py").read_text(encoding="utf-8")
    assert src.count(old) >= 1, f"adapter source changed: {old!r} not found"
    ns = {"__name__": "patched_torch_adapter"}
    exec(compile(src.replace(old, new), "patched_torch_adapter", "exec"), ns)  # noqa: S102 — test-only variant
    return ns["run_trainer_vector"]


BUGS = {
    # transformers <= 4.45: every micro-batch's token MEAN, averaged over the accumulation steps
    "sft_mean_of_micro_batch_means": ("sft", ('ignore_index=IGNORE, reduction="sum") / denom',
                                              'ignore_index=IGNORE, reduction="mean") / len(window)')),
    # TRL DPOTrainer / RewardTrainer: mean inside each micro-batch, divided by the accumulation steps
    "dpo_mean_of_micro_batch_means": ("dpo", ("loss = per_pair.sum() / denom", "loss = per_pair.mean() / len(window)")),
    "reward_mean_of_micro_batch_means": ("reward", ("-F.logsigmoid(c - r - m).sum() / denom",
                                                    "-F.logsigmoid(c - r - m).mean() / len(window)")),
    "reward_margin_ignored": ("reward", ("F.logsigmoid(c - r - m)", "F.logsigmoid(c - r)")),
    "reward_score_at_last_position": ("reward", ("mask.sum(dim=1) - 1]", "mask.shape[1] - 1]")),
    "dpo_robust_sign_of_label_smoothing": ("dpo", ("- eps * F.logsigmoid(-z)", "+ eps * F.logsigmoid(-z)")),
    "sft_exact_gelu": ("sft", ('approximate="tanh"', 'approximate="none"')),
    # a real query that sees the next token (changes the logits at real positions, the loss, everything)
    "sft_attention_sees_the_next_token": ("sft", ("allowed = (j <= i)[None]", "allowed = (j <= i + 1)[None]")),
}

#: Differences confined to padded positions: not bugs (spec/model.md §4: their values are not normative),
#: so the trainer vectors must PASS them — transformers' GPT-2, whose padded queries do not see themselves,
#: passes trainer_sft for this reason (tests/test_conformance_trl.py).
PADDING_ONLY = {
    "sft_padded_queries_see_padded_keys": ("sft", ("((j[None] < n_real[:, None, None]) | (j == i)[None])",
                                                   "torch.ones_like(j[None] < n_real[:, None, None])")),
}


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_vectors_catch_implementation_bugs(bug, torch_adapter):
    kind, (old, new) = BUGS[bug]
    wrong = _patched_torch_source(old, new)
    rows = []
    C._run_trainer_case(type("Wrong", (), {"run_trainer_vector": staticmethod(wrong)})(), CASES[kind], 1e-10, 1e-12, rows)
    assert rows[0].status == "FAIL", bug


@pytest.mark.parametrize("variant", sorted(PADDING_ONLY))
def test_padded_positions_are_not_compared(variant, torch_adapter):
    kind, (old, new) = PADDING_ONLY[variant]
    wrong = _patched_torch_source(old, new)
    got = wrong(C.decode(CASES[kind]["inputs"]))
    mask = np.asarray(INPUTS[kind]["micro_batches"][0]["attention_mask"]) != 0
    diff = np.abs(np.asarray(got["logits"]) - EXPECTED[kind]["logits"]).max(axis=-1)  # (B, T)
    assert diff[~mask].max() > 1e-3 and diff[mask].max() < 1e-12  # it differs, only where padded
    rows = []
    C._run_trainer_case(type("Padding", (), {"run_trainer_vector": staticmethod(wrong)})(), CASES[kind], 1e-10, 1e-12, rows)
    assert rows[0].status == "OK", rows[0].detail


CONFIG_BUGS = {
    "no_warmup": {"warmup_steps": 0},                 # step 1 at the full rate
    "no_clipping": {"gradient_clip": 0.0},            # clipping forgotten
    "decay_on_everything": {"no_decay_parameters": []},  # biases and LayerNorm weights decayed
    "adam_eps_inside_sqrt": {"adam_eps": 1e-16},      # a different eps (the vectors see eps)
}


@pytest.mark.parametrize("bug", sorted(CONFIG_BUGS))
@pytest.mark.parametrize("kind", KINDS)
def test_vectors_catch_wrong_optimisation(kind, bug, torch_adapter):
    case = CASES[kind]
    got = torch_adapter.run_trainer_vector(_mutated_inputs(case, **CONFIG_BUGS[bug]))
    ok, *_ = C._merge(C.trainer_comparisons(got, case, 1e-10, 1e-12))
    assert not ok, (kind, bug)


def test_logging_the_next_steps_rate_fails(torch_adapter):
    """transformers logs the rate of the NEXT step; the vectors hold the rate each step used."""
    case = CASES["sft"]
    got = torch_adapter.run_trainer_vector(C.decode(case["inputs"]))
    lr = np.asarray(got["learning_rates"])
    got["learning_rates"] = np.append(lr[1:], 0.0)
    ok, *_ = C._merge(C.trainer_comparisons(got, case, 1e-10, 1e-12))
    assert not ok


def test_quantity_tolerances_are_narrow():
    """The loose tolerance covers only the noise-integrating parameters, and only their final values."""
    for kind in KINDS:
        qt = CASES[kind]["quantity_tolerances"]
        assert all(k.startswith("parameters_after.") for k in qt)
        names = {k.split(".", 1)[1] for k in qt}
        assert {f"h.{i}.attn.c_attn.bias" for i in range(INPUTS[kind]["model_config"]["n_layer"])} <= names
        assert names <= {"h.0.attn.c_attn.bias", "h.1.attn.c_attn.bias", "ln_f.bias"}
        assert all(v == {"atol": 1e-8} for v in qt.values())
        # the key thirds of c_attn.bias really get (numerically) no gradient; the q/v thirds do
        d = INPUTS[kind]["model_config"]["n_embd"]
        g = EXPECTED[kind]["grads"]["h.0.attn.c_attn.bias"]
        assert np.abs(g[d:2 * d]).max() < 1e-15 < np.abs(g[:d]).max()
        # yet the parameter moved: its final value is checked, only with an absolute 1e-8
        assert np.abs(EXPECTED[kind]["parameters_after"]["h.0.attn.c_attn.bias"] - INPUTS[kind]["parameters"]["h.0.attn.c_attn.bias"]).max() > 1e-3
    g = EXPECTED["reward"]["grads"]["ln_f.bias"]
    assert np.abs(g).max() < 1e-15  # r_c and r_r shift alike: no gradient


def test_vector_exercises_accumulation_warmup_and_clipping():
    for kind in KINDS:
        inputs, exp = INPUTS[kind], EXPECTED[kind]
        tc, mbs = inputs["trainer_config"], inputs["micro_batches"]
        assert tc["gradient_accumulation"] == 2 and len(inputs["windows"][0]) == 2
        assert tc["warmup_steps"] >= 1 and exp["learning_rates"][0] == 0.0 and exp["learning_rates"][1] == tc["toc_do_hoc"]
        assert exp["grad_norm"] > tc["gradient_clip"]  # step 1 is clipped
        sizes = [len(mbs[i]["example_indices"]) for i in inputs["windows"][-1]]
        assert sizes == [2, 1]
        if kind == "dpo":
            assert tc["label_smoothing"] > 0
            assert exp["loss"] == pytest.approx(math.log(2), abs=1e-15)  # policy == reference at step 1
        if kind == "reward":
            assert any(float(m) != 0 for mb in mbs for m in mb["margin"])
        size = (VEC / f"trainer_{kind}.json").stat().st_size
        assert size < 2_000_000, size
