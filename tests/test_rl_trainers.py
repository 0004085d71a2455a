"""The online-RL trainers (GRPOTrainer, RLOOTrainer, OnlineDPOTrainer) end to end.

- one GRPO step and one RLOO step of the REAL trainers, given fixed prompts, completions (the sampler is
  replaced) and rewards: the first loss, every gradient and the updated weights agree with a plain-torch
  implementation written here from TRL v1.9.0's formulas (float64, to rounding);
- GRPO on a toy task with a programmatic reward raises the mean reward on held-out prompts;
- rewards from a RewardModel-trained model are its scores of the templated prompt + completion, as in
  its training; weighted functions, None rewards;
- online DPO picks the higher-reward completion and starts at log 2;
- bad settings fail before any compute, naming the setting.
Kill-and-resume of GRPO: tests/test_rl_resume.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import vietnamese_ai_ref.trainers.loop as loop_mod
import vietnamese_ai_ref.trainers.online as online_mod
import vietnamese_ai_ref.trainers.online_dpo as odpo_mod
from vietnamese_ai_ref import GRPOTrainer, OnlineDPOTrainer, RewardModel, RLOOTrainer
from vietnamese_ai_ref.backends import use_backend
from vietnamese_ai_ref.core.optim import AdamW
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM
from vietnamese_ai_ref.models.sampling import Rollout, sample_rollouts
from vietnamese_ai_ref.text.records import format_prompt

ROOT = Path(__file__).resolve().parent.parent
EOS = 258
CFG = dict(n_positions=96, n_embd=16, n_layer=1, n_head=2, seed=4)


def tiny(seed=4):
    return TransformerLM(GPTConfig(**dict(CFG, seed=seed)))


def perturbed(model, seed, scale=0.05):
    ref = model.copy()
    rng = np.random.default_rng(seed)
    ref.load_state_dict({k: v + scale * rng.standard_normal(v.shape) for k, v in ref.state_dict().items()})
    return ref


# ------------------------------------------------------------------------------ fixed rollouts

PROMPTS = ["Tính 1 + 1", "Chào bạn"]
# two completions per prompt (G = 2): ids (a row with EOS, rows of different lengths)
COMPLETIONS = [[50, 51, 52, EOS], [60, 61], [70, 71, 72, 73, 74], [80, EOS]]
REWARDS = [1.0, 0.25, -0.5, 2.0]


def fixed_sampler(completions):
    """Replaces online.sample_rollouts: prompt p (of PROMPTS, recognised by its ids) always gets the
    completions 2p and 2p + 1, in the order the window asks for its prompts (G = 2)."""
    def sample(model, prompt_ids, *, num_generations, max_completion_length, mask_truncated_completions=False, **kw):
        assert num_generations == 2
        tok = model.tokenizer
        which = {tuple([tok.bos_token_id] + tok.encode(format_prompt(p))): i for i, p in enumerate(PROMPTS)}
        rows = [completions[2 * which[tuple(p)] + g] for p in prompt_ids for g in range(2)]
        B, T = len(rows), max(len(c) for c in rows)
        ids = np.zeros((B, T), dtype=np.int64)
        mask = np.zeros((B, T), dtype=np.int64)
        for r, c in enumerate(rows):
            ids[r, :len(c)] = c
            n = c.index(EOS) + 1 if EOS in c else len(c)
            mask[r, :n] = 1
        return Rollout(ids, mask, np.array([EOS in c for c in rows]), np.array([len(c) for c in rows], dtype=np.int64))
    return sample


def fixed_rewards(prompts, completions, **kw):
    table = {(p, c): r for p, c, r in zip([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, TEXTS, REWARDS)}
    return [table.get((p, c), 0.0) for p, c in zip(prompts, completions)]  # 0: the probe


def _texts():
    from vietnamese_ai_ref.text.tokenizer import ByteTokenizer

    tok = ByteTokenizer()
    return [tok.decode([t for t in c if t != EOS], skip_special_tokens=True) for c in COMPLETIONS]


TEXTS = _texts()


def run_one_step(trainer, monkeypatch, ref=None):
    """One optimiser step of the real trainer on the fixed rollout; returns (model before, model, loss, grads)."""
    seen = {}

    class RecordingAdamW(AdamW):
        def grad_norm(self):
            seen.setdefault("grads", {n: np.array(g.grad[a:b]).reshape(p.data.shape) for g in self.groups
                                      for n, p, a, b in zip(g.names, g.params, g.offsets, g.offsets[1:])})
            return super().grad_norm()

    monkeypatch.setattr(loop_mod, "AdamW", RecordingAdamW)
    monkeypatch.setattr(online_mod, "sample_rollouts", fixed_sampler(COMPLETIONS))
    model = tiny()
    before = model.state_dict()
    r = trainer.huan_luyen(model, PROMPTS, ham_thuong=fixed_rewards, ref_model=ref)
    assert r["global_step"] == 1
    return before, model, r["history"]["train_loss"][0], seen["grads"]


# ------------------------------------------------------------------------------ plain torch, TRL's formulas

def _torch_setup(torch, before):
    from vietnamese_ai_ref.conformance import runner as C

    adapter = C.load_adapter(str(ROOT / "examples" / "torch_adapter.py"))  # its GPT-2 forward (spec/model.md)
    P = {n: torch.tensor(a, dtype=torch.float64, requires_grad=True) for n, a in before.items()}
    cfg = {"n_embd": CFG["n_embd"], "n_head": CFG["n_head"], "n_layer": CFG["n_layer"], "layer_norm_epsilon": 1e-5}
    tok = TransformerLM(GPTConfig(**CFG)).tokenizer
    prompt_ids = [[tok.bos_token_id] + tok.encode(format_prompt(p)) for p in PROMPTS]

    def per_token_logps(params, row, temperature):
        """TRL `_get_per_token_logps_and_entropies`: logits of the completion positions ÷ T, log-softmax, gather."""
        p_ids, c = prompt_ids[row // 2], COMPLETIONS[row]
        ids = torch.tensor([p_ids + c])
        h = adapter._gpt2_hidden(params, cfg, ids, torch.ones_like(ids))
        logits = (h @ params["wte.weight"].T)[0, len(p_ids) - 1:len(p_ids) - 1 + len(c)] / temperature  # (Tc, V)
        return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(c)[:, None])[:, 0]  # (Tc,)

    def mask(row):
        c = COMPLETIONS[row]
        n = c.index(EOS) + 1 if EOS in c else len(c)
        return torch.tensor([1.0] * n + [0.0] * (len(c) - n), dtype=torch.float64)

    return P, per_token_logps, mask


def _torch_update(torch, P, lr, clip=1.0):
    params = list(P.values())
    torch.nn.utils.clip_grad_norm_(params, clip, foreach=False)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, foreach=False)
    opt.step()
    return {n: p.detach().numpy().copy() for n, p in P.items()}


def _compare(torch_loss, torch_grads, torch_after, loss, grads, model):
    assert loss == pytest.approx(torch_loss, rel=1e-10, abs=1e-13)
    assert set(grads) == set(torch_grads)
    nonzero = 0
    for n, g in torch_grads.items():
        np.testing.assert_allclose(grads[n], g, rtol=1e-9, atol=1e-13, err_msg=n)
        nonzero += bool(np.abs(g).max() > 1e-8)
    assert nonzero >= len(torch_grads) - 2  # the step moves (nearly) every parameter
    for n, w in model.state_dict().items():
        np.testing.assert_allclose(w, torch_after[n], rtol=1e-10, atol=1e-13, err_msg=n)


def test_grpo_step_matches_plain_torch(torch, monkeypatch):
    """TRL grpo_trainer.py: A = (R − mean_g)/(std_g + 1e-4) (Bessel), r = exp(logp − logp.detach()),
    −min(r·A, clamp(r, 1−ε, 1+ε)·A) + β·k3 with the reference, dapo: Σ ℓ·M / (mask tokens of the whole
    generation batch), two micro-batches of one prompt each, clipped, AdamW."""
    T, beta, lr = 0.7, 0.04, 1e-2
    with use_backend("numpy", "float64"):
        ref = perturbed(tiny(), seed=9)
        tr = GRPOTrainer(kich_thuoc_batch=2, num_generations=2, gradient_accumulation=2, beta=beta, toc_do_hoc=lr,
                         temperature=T, max_completion_length=6, logging_steps=1)
        before, model, loss, grads = run_one_step(tr, monkeypatch, ref=perturbed(tiny(), seed=9))
        h = tr.lay_lich_su()
        ref_state = ref.state_dict()
    P, logps_of, mask = _torch_setup(torch, before)
    R = torch.tensor(REWARDS, dtype=torch.float64).view(-1, 2)
    A = ((R - R.mean(dim=1, keepdim=True)) / (R.std(dim=1, keepdim=True) + 1e-4)).view(-1)
    N = sum(float(mask(i).sum()) for i in range(4))
    Pref = {n: torch.tensor(a, dtype=torch.float64) for n, a in ref_state.items()}
    total, kl_sum = 0.0, 0.0
    for mb in ((0, 1), (2, 3)):
        loss_mb = 0.0
        for i in mb:
            lp = logps_of(P, i, T)
            with torch.no_grad():
                ref_lp = logps_of(Pref, i, T)
            coef_1 = torch.exp(lp - lp.detach())
            coef_2 = torch.clamp(coef_1, 1 - 0.2, 1 + 0.2)
            per_token = -torch.min(coef_1 * A[i], coef_2 * A[i])
            kl = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
            per_token = per_token + beta * kl
            loss_mb = loss_mb + (per_token * mask(i)).sum() / N
            kl_sum += float((kl * mask(i)).sum().detach())
        loss_mb.backward()
        total += float(loss_mb.detach())
    torch_grads = {n: p.grad.numpy().copy() for n, p in P.items()}
    after = _torch_update(torch, P, lr)
    _compare(total, torch_grads, after, loss, grads, model)
    assert h["kl"][0] == pytest.approx(kl_sum / N, rel=1e-10) and h["kl"][0] > 1e-4
    assert h["reward"][0] == pytest.approx(np.mean(REWARDS))
    assert h["reward_std"][0] == pytest.approx(float(R.std(dim=1).mean()))
    assert h["completions/clipped_ratio"][0] == 0.5 and h["completions/mean_length"][0] == 3.25


def test_rloo_step_matches_plain_torch(torch, monkeypatch):
    """TRL rloo_trainer.py: R ← R − β·Σ_t (old − ref)·M (old = the sampling policy), A = R − leave-one-out
    mean, r = exp(Σ logp·M − Σ old·M), −min(r·A, clamp·A) averaged over sequences, ÷ accumulation steps."""
    T, beta, lr = 0.9, 0.05, 1e-2
    with use_backend("numpy", "float64"):
        ref = perturbed(tiny(), seed=5)
        tr = RLOOTrainer(kich_thuoc_batch=2, num_generations=2, gradient_accumulation=2, beta=beta, toc_do_hoc=lr,
                         temperature=T, max_completion_length=6, logging_steps=1)
        before, model, loss, grads = run_one_step(tr, monkeypatch, ref=perturbed(tiny(), seed=5))
        h = tr.lay_lich_su()
        ref_state = ref.state_dict()
    P, logps_of, mask = _torch_setup(torch, before)
    Pref = {n: torch.tensor(a, dtype=torch.float64) for n, a in ref_state.items()}
    with torch.no_grad():
        old = [logps_of(P, i, T) for i in range(4)]
        kl = torch.stack([((old[i] - logps_of(Pref, i, T)) * mask(i)).sum() for i in range(4)])
    R = torch.tensor(REWARDS, dtype=torch.float64) - beta * kl
    g = R.view(-1, 2)
    A = (g - (g.sum(dim=1, keepdim=True) - g) / (2 - 1)).view(-1)
    total = 0.0
    for mb in ((0, 1), (2, 3)):
        per_seq = []
        for i in mb:
            lp = logps_of(P, i, T)
            r = torch.exp((lp * mask(i)).sum() - (old[i] * mask(i)).sum())
            per_seq.append(-torch.min(r * A[i], torch.clamp(r, 0.8, 1.2) * A[i]))
        loss_mb = torch.stack(per_seq).mean() / 2
        loss_mb.backward()
        total += float(loss_mb.detach())
    torch_grads = {n: p.grad.numpy().copy() for n, p in P.items()}
    after = _torch_update(torch, P, lr)
    _compare(total, torch_grads, after, loss, grads, model)
    assert h["kl"][0] == pytest.approx(float(kl.mean()), rel=1e-10) and abs(h["kl"][0]) > 1e-4


# ------------------------------------------------------------------------------ learning

def letters(prompts, completions, **kw):
    """Share of lower-case ASCII letters in the completion (random init: ~10 %)."""
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


def held_out_reward(model, prompts):
    tok = model.tokenizer
    ids = [[tok.bos_token_id] + tok.encode(format_prompt(p)) for p in prompts]
    ro = sample_rollouts(model, ids, num_generations=8, max_completion_length=8, seed=123)
    texts = [tok.decode([t for t in c if t != tok.eos_token_id], skip_special_tokens=True) for c in ro.completions()]
    return float(np.mean(letters(prompts, texts)))


def test_grpo_raises_held_out_reward():
    """32 steps of GRPO (16 train prompts, G = 8) on a 1-layer model: the held-out mean reward of sampled
    completions goes from ~0.1 (chance) to > 0.4; the logged training reward rises too."""
    model = TransformerLM(GPTConfig(n_positions=48, n_embd=32, n_layer=1, n_head=2, seed=0))
    held = [f"Câu hỏi {i}" for i in range(8)]
    before = held_out_reward(model, held)
    tr = GRPOTrainer(so_vong=8, kich_thuoc_batch=32, num_generations=8, toc_do_hoc=1e-2, max_completion_length=8,
                     logging_steps=1, seed=1)
    r = tr.huan_luyen(model, [f"Viết {i}" for i in range(16)], ham_thuong=letters)
    after = held_out_reward(model, held)
    assert r["global_step"] == 32
    assert before < 0.15 and after > 0.4, (before, after)
    rw = r["history"]["reward"]
    assert np.mean(rw[-4:]) > np.mean(rw[:4]) + 0.2
    assert r["final_reward"] == rw[-1]
    assert all(0.0 <= f <= 1.0 for f in r["history"]["frac_reward_zero_std"])
    assert r["history"]["entropy"][-1] < r["history"]["entropy"][0]  # the policy sharpens


# ------------------------------------------------------------------------------ rewards

def test_reward_model_scores_the_templated_prompt_and_completion(monkeypatch):
    """The reward model's reward is exactly RewardModel.cham_diem_cap (the training template)."""
    with use_backend("numpy", "float64"):
        rm = tiny(seed=8)
        rmt = RewardModel(toc_do_hoc=1e-3, kich_thuoc_batch=2)
        rmt.huan_luyen(rm, [{"prompt": "Chào", "chosen": "Dạ, chào bạn.", "rejected": "Không."}] * 2)
        expected = rmt.cham_diem_cap(rm, [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, TEXTS)
        monkeypatch.setattr(online_mod, "sample_rollouts", fixed_sampler(COMPLETIONS))
        seen = []

        def spy(prompts, completions, **kw):
            seen.append((list(prompts), list(completions), kw))
            return [None] * len(completions)  # no opinion: only the reward model counts

        tr = GRPOTrainer(kich_thuoc_batch=4, num_generations=2, max_completion_length=6, logging_steps=1)
        r = tr.huan_luyen(tiny(), [{"prompt": p, "dap_an": str(i)} for i, p in enumerate(PROMPTS)],
                          ham_thuong=spy, reward_model=rm, trong_so_thuong=[1.0, 2.0])
    h = r["history"]
    assert h["rewards/reward_model/mean"][0] == pytest.approx(np.mean(expected), rel=1e-12)
    assert h["reward"][0] == pytest.approx(2.0 * np.mean(expected), rel=1e-12)  # weight 2, the None ignored
    assert math.isnan(h["rewards/spy/mean"][0])  # never a number: a mean over nothing
    assert seen[0] == (PROMPTS[:1], [""], {"dap_an": ["0"]})  # the probe before any compute
    prompts, texts, kw = seen[1]  # the window's prompts come in the shuffled order of the epoch
    assert sorted(zip(prompts, texts, kw["dap_an"])) == sorted(
        zip([PROMPTS[0]] * 2 + [PROMPTS[1]] * 2, TEXTS, ["0", "0", "1", "1"]))


def test_weighted_functions_and_unscorable_rows(monkeypatch):
    monkeypatch.setattr(online_mod, "sample_rollouts", fixed_sampler(COMPLETIONS))

    def a(prompts, completions, **kw):
        return [1.0, None, 3.0, None]

    def b(prompts, completions, **kw):
        return [0.5, None, None, 1.0]

    a_ = lambda p, c, **kw: [1.0] * len(c) if len(c) == 1 else a(p, c)  # noqa: E731 — the probe has one row
    b_ = lambda p, c, **kw: [1.0] * len(c) if len(c) == 1 else b(p, c)  # noqa: E731
    a_.__name__, b_.__name__ = "a", "b"
    tr = GRPOTrainer(kich_thuoc_batch=4, num_generations=2, max_completion_length=6, logging_steps=1,
                     scale_rewards="none")
    r = tr.huan_luyen(tiny(), PROMPTS, ham_thuong=[a_, b_], trong_so_thuong=[1.0, -2.0])
    h = r["history"]
    R = [1.0 - 1.0, math.nan, 3.0, -2.0]  # row 1: no source answered → unscorable
    assert h["reward"][0] == pytest.approx(np.nanmean(R))
    assert h["rewards/a/mean"][0] == 2.0 and h["rewards/b/mean"][0] == 0.75
    assert h["frac_reward_zero_std"][0] == 0.0 and h["reward_std"][0] == pytest.approx(np.std([3.0, -2.0], ddof=1))


# ------------------------------------------------------------------------------ online DPO

def test_online_dpo_picks_the_higher_reward(monkeypatch):
    monkeypatch.setattr(online_mod, "sample_rollouts", fixed_sampler(COMPLETIONS))
    seen = []
    step = odpo_mod.dpo_micro_step

    def recording(model, batch, *a):
        seen.append([(e["chosen_ids"], e["rejected_ids"]) for e in batch])
        return step(model, batch, *a)

    monkeypatch.setattr(odpo_mod, "dpo_micro_step", recording)
    with use_backend("numpy", "float64"):
        tr = OnlineDPOTrainer(kich_thuoc_batch=2, toc_do_hoc=1e-2, max_completion_length=6, logging_steps=1,
                              missing_eos_penalty=0.5)
        r = tr.huan_luyen(tiny(), PROMPTS, ham_thuong=fixed_rewards)
    tok = TransformerLM(GPTConfig(**CFG)).tokenizer
    heads = [[tok.bos_token_id] + tok.encode(format_prompt(p)) for p in PROMPTS]

    def completion(ids):
        head = next(h for h in heads if ids[:len(h)] == h)
        return ids[len(head):]

    pairs = sorted((completion(c), completion(r)) for c, r in seen[0])
    # 1 > 0.25 − 0.5 (no EOS: penalised); 2 > −0.5 − 0.5
    assert pairs == sorted([(COMPLETIONS[0], COMPLETIONS[1]), (COMPLETIONS[3], COMPLETIONS[2])])
    h = r["history"]
    assert h["train_loss"][0] == pytest.approx(math.log(2), abs=1e-12)  # policy == reference at step 1
    assert h["objective/scores"][0] == pytest.approx(np.mean(REWARDS))
    assert h["objective/scores_margin"][0] == pytest.approx(((1.0 - 0.25) + (2.0 + 0.5)) / 2)
    assert h["val/contain_eos_token"][0] == 0.5
    assert set(r) == {"tong_thoi_gian", "so_epoch", "global_step", "train_loss_min", "final_reward", "history"}
    st = tr.thong_ke()
    assert st["da_huan_luyen"] and st["global_step"] == 1 and st["cau_hinh"]["missing_eos_penalty"] == 0.5


# ------------------------------------------------------------------------------ bad settings

@pytest.mark.parametrize("cls, kw, name", [
    (GRPOTrainer, dict(kich_thuoc_batch=6, num_generations=4), "kich_thuoc_batch"),
    (GRPOTrainer, dict(epsilon=0.0), "epsilon"),
    (GRPOTrainer, dict(epsilon=-0.1), "epsilon"),
    (GRPOTrainer, dict(beta=-0.01), "beta"),
    (GRPOTrainer, dict(num_generations=1, kich_thuoc_batch=4), "num_generations"),
    (GRPOTrainer, dict(loss_type="ppo"), "loss_type"),
    (GRPOTrainer, dict(scale_rewards=True), "scale_rewards"),
    (GRPOTrainer, dict(temperature=0.0), "temperature"),
    (GRPOTrainer, dict(top_p=0.0), "top_p"),
    (GRPOTrainer, dict(top_k=-1), "top_k"),
    (GRPOTrainer, dict(epsilon_high=0.0), "epsilon_high"),
    (RLOOTrainer, dict(kich_thuoc_batch=3, num_generations=2), "kich_thuoc_batch"),
    (RLOOTrainer, dict(beta=float("nan")), "beta"),
    (RLOOTrainer, dict(reward_clip_range=(1.0, 0.0)), "reward_clip_range"),
    (RLOOTrainer, dict(normalize_advantages=1), "normalize_advantages"),
    (OnlineDPOTrainer, dict(beta=0.0), "beta"),
    (OnlineDPOTrainer, dict(missing_eos_penalty=-1.0), "missing_eos_penalty"),
])
def test_bad_settings_fail_in_the_constructor(cls, kw, name):
    with pytest.raises(ValueError, match=f"'{name}'") as e:
        cls(**kw)
    assert " / " in str(e.value)  # Vietnamese first, English after


def _no_compute(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("computed before the error")
    monkeypatch.setattr(online_mod, "sample_rollouts", boom)
    monkeypatch.setattr(loop_mod, "run_loop", boom)
    monkeypatch.setattr(online_mod, "run_loop", boom)


@pytest.mark.parametrize("fn, match", [
    (lambda p, c, **k: [1.0] * (len(c) + 1), "ham_thuong|list 2|list of 1"),
    (lambda p, c, **k: ["1"] * len(c), "không phải số|not a finite number"),
    (lambda p, c, **k: [float("nan")] * len(c), "not a finite number"),
    (lambda p, c, **k: 3.0, "list"),
])
def test_bad_reward_functions_fail_before_any_compute(fn, match, monkeypatch):
    _no_compute(monkeypatch)
    fn.__name__ = "xau"
    with pytest.raises(ValueError, match=match) as e:
        GRPOTrainer(kich_thuoc_batch=2, num_generations=2, max_completion_length=6).huan_luyen(
            tiny(), PROMPTS, ham_thuong=fn)
    assert "'xau'" in str(e.value)


def test_bad_sources_and_references_fail_before_any_compute(monkeypatch):
    _no_compute(monkeypatch)
    tr = GRPOTrainer(kich_thuoc_batch=2, num_generations=2, beta=0.1, max_completion_length=6)
    m = tiny()
    cases = [(dict(), "ham_thuong"), (dict(ham_thuong=3), r"ham_thuong\[0\]"),
             (dict(ham_thuong=letters, reward_model=tiny()), "reward_model"),
             (dict(ham_thuong=letters, trong_so_thuong=[1.0, 2.0]), "trong_so_thuong"),
             (dict(ham_thuong=letters, ref_model=m), "ref_model")]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            tr.huan_luyen(m, PROMPTS, **kw)
    with pytest.raises(Exception, match="prompts"):
        tr.huan_luyen(m, [{"text": "x"}], ham_thuong=letters)
    with pytest.raises(ValueError, match="max_completion_length"):
        GRPOTrainer(kich_thuoc_batch=2, num_generations=2, max_completion_length=95).huan_luyen(
            m, PROMPTS, ham_thuong=letters)


@pytest.mark.parametrize("kw", [dict(loss_type="grpo"), dict(loss_type="bnpo"), dict(loss_type="dr_grpo"),
                                dict(importance_sampling_level="sequence", delta=2.0, epsilon_high=0.28),
                                dict(scale_rewards="batch", mask_truncated_completions=True),
                                dict(top_k=5, top_p=0.9, temperature=0.8)])
def test_grpo_options_match_the_spec_loss(kw, monkeypatch):
    """Every option reaches grpo_loss: the first step's loss equals the spec function on the same rollout."""
    from vietnamese_ai_ref import losses

    calls = []
    real = losses.grpo_loss

    def spy(*a, **k):
        out = real(*a, **k)
        calls.append((k, float(out.item())))
        return out

    monkeypatch.setattr(losses, "grpo_loss", spy)
    with use_backend("numpy", "float64"):
        tr = GRPOTrainer(kich_thuoc_batch=4, num_generations=2, gradient_accumulation=2, max_completion_length=6,
                         logging_steps=1, toc_do_hoc=1e-3, **kw)
        r = tr.huan_luyen(tiny(), [f"p{i}" for i in range(4)], ham_thuong=letters)
    assert r["global_step"] == 1 and len(calls) == 2
    for k, _ in calls:
        for name in ("loss_type", "importance_sampling_level", "delta", "epsilon_high"):
            if name in kw:
                assert k[name] == kw[name]
        assert k["num_accumulation_steps"] == 2 and k["max_completion_length"] == 6
    assert calls[0][0]["num_items_in_batch"] == calls[1][0]["num_items_in_batch"]  # the step's token count
    assert r["history"]["train_loss"][0] == pytest.approx(calls[0][1] + calls[1][1], rel=1e-12)
    h = r["history"]
    if kw.get("mask_truncated_completions") and h["completions/clipped_ratio"][0] == 1.0:
        # no row ended with EOS: every mask is 0, the loss is 0 and no token statistic exists
        assert h["train_loss"][0] == 0.0 and math.isnan(h["entropy"][0])
    else:
        assert all(math.isfinite(v[0]) for key, v in h.items() if not key.startswith("rewards/"))
