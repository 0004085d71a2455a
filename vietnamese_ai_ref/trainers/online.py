"""What the online-RL trainers share: prompts, rewards, rollouts and the per-token layout of completions.

What it is for: GRPOTrainer, RLOOTrainer and OnlineDPOTrainer (grpo.py, rloo.py, online_dpo.py) run the
shared loop over *prompts*; at the start of each optimiser step the loop's `prepare_window` hook calls
`OnlineTrainerBase._rollout`, which samples the window's completions (models/sampling.py, spec/rl.md
§9, rollout index = the step), decodes them, scores them (`RewardSources`: Python reward functions
and/or a `RewardModel`-trained model on the templated prompt + completion, as it was trained), and
hands the trainer's `_prepare` the scored rollout. Here too: prompt records → prompt ids with the
spec/data.md template (`prepare_prompts`), the (B, L) layout of prompt + completion rows and the
per-token log-probabilities of the completion tokens (`completion_batch`, `completion_logps`), the
reference model and its fingerprint (a resumed run must use the same reference), and `huan_luyen`.
What it is not: a formula (losses/rl.py) or a loop of its own (loop.py).
"""

from __future__ import annotations

import hashlib
import math
import numbers

from .. import losses
from ..backends import get_backend, host_np
from ..core.autograd import no_grad
from ..core.errors import CheckpointError, DataError, SettingError
from ..models.generation import eos_ids
from ..models.sampling import sample_rollouts
from ..text.records import encode_for_scoring, format_prompt, pad_batch
from .base import TrainerBase, reference_policy
from .loop import run_loop
from .reward import score_ids
from .settings import LoopSettings, check_callback, check_model
from .sft import effective_max_len, resolve_tokenizer

__all__ = ["OnlineTrainerBase", "RewardSources", "prepare_prompts", "completion_batch", "completion_logps"]


# ============================ prompts ===============================================================

def prepare_prompts(records, tokenizer, max_prompt_length: int, name="prompts"):
    """Validate every record, then tokenise. Records: strings, or dicts with a non-empty "prompt" string
    (other keys are passed to the reward functions). Returns examples {"index", "prompt_ids"}: [bos] +
    the templated prompt (spec/data.md), keeping its last `max_prompt_length` tokens."""
    if isinstance(records, (str, bytes)) or not isinstance(records, (list, tuple)) or not records:
        raise DataError(f"'{name}' phải là list không rỗng các chuỗi hoặc dict có khóa 'prompt' "
                        f"/ '{name}' must be a non-empty list of strings or of dicts with a 'prompt' key")
    texts = []
    for i, r in enumerate(records):
        p = r.get("prompt") if isinstance(r, dict) else r
        if not isinstance(p, str) or not p.strip():
            what = "khóa 'prompt'" if isinstance(r, dict) else "phần tử"
            raise DataError(f"{name}[{i}]: {what} cần một chuỗi không rỗng, nhận được {p!r} "
                            f"/ {name}[{i}]: expected a non-empty prompt string, got {p!r}")
        texts.append(p)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    out = []
    for i, p in enumerate(texts):
        ids = bos + tokenizer.encode(format_prompt(p))
        out.append({"index": i, "prompt_ids": ids[max(0, len(ids) - max_prompt_length):]})
    return out, texts


def record_columns(records) -> list:
    """Per record, the keys other than "prompt" (what reward functions receive as keyword lists)."""
    return [{k: v for k, v in r.items() if k != "prompt"} if isinstance(r, dict) else {} for r in records]


# ============================ rewards ===============================================================

class RewardSources:
    """The rewards of a rollout: Python functions f(prompts, completions, **columns) -> list[float | None]
    and/or a reward model (its scalar on [bos] + templated prompt + completion + [eos], as RewardModel
    trained it), combined as R = Σ_k w_k·r_k over the sources that returned a number (NaN when none did:
    the completion is unscorable, spec/rl.md §2)."""

    def __init__(self, ham_thuong, reward_model, trong_so_thuong, *, max_seq_length, batch_size):
        funcs = [] if ham_thuong is None else list(ham_thuong) if isinstance(ham_thuong, (list, tuple)) \
            else [ham_thuong]
        for i, f in enumerate(funcs):
            if not callable(f):
                raise SettingError(f"'ham_thuong[{i}]' phải là một hàm f(prompts, completions, **cot) -> list, nhận "
                                 f"được {f!r} / 'ham_thuong[{i}]' must be a callable, got {f!r}")
        if reward_model is not None:
            check_model(reward_model, "reward_model")
            if not getattr(reward_model, "has_score_head", False):
                raise SettingError("'reward_model' chưa có đầu điểm (score head): hãy huấn luyện nó bằng RewardModel "
                                 "/ 'reward_model' has no score head: train it with RewardModel.huan_luyen first")
        if not funcs and reward_model is None:
            raise SettingError("Cần ít nhất một nguồn phần thưởng: 'ham_thuong' hoặc 'reward_model' / at least one "
                             "reward source is needed: 'ham_thuong' (reward functions) or 'reward_model'")
        self.funcs, self.model = funcs, reward_model
        self.names = [getattr(f, "__name__", f"ham_{i}") for i, f in enumerate(funcs)]
        self.names += ["reward_model"] if reward_model is not None else []
        if len(set(self.names)) != len(self.names):
            self.names = [f"{n}_{i}" for i, n in enumerate(self.names)]
        self.weights = self._weights(trong_so_thuong)
        self.max_len = None if reward_model is None else effective_max_len(max_seq_length, reward_model)
        self.batch_size = batch_size

    def _weights(self, w):
        n = len(self.names)
        if w is None:
            return [1.0] * n
        ok = isinstance(w, (list, tuple)) and len(w) == n and all(
            isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) for x in w)
        if not ok:
            raise SettingError(f"'trong_so_thuong' phải là list {n} số hữu hạn (một cho mỗi nguồn {self.names}), nhận "
                             f"được {w!r} / 'trong_so_thuong' must be a list of {n} finite numbers, one per "
                             f"reward source {self.names}, got {w!r}")
        return [float(x) for x in w]

    def _call(self, i, prompts, completions, columns, where, probe=False):
        """Source i's rewards as floats (NaN for None), checked: a list of len(completions) numbers/None.
        A probe that the function itself cannot answer (it raises) checks nothing."""
        f, name, n = self.funcs[i], self.names[i], len(completions)
        kw = {k: [c.get(k) for c in columns] for k in sorted({k for c in columns for k in c})}
        try:
            out = f(prompts, completions, **kw)
        except Exception:  # noqa: BLE001 — only the probe forgives: the real call raises as it is
            if probe:
                return None
            raise
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__") or len(out) != n:
            got = len(out) if hasattr(out, "__len__") and not isinstance(out, (str, bytes)) else repr(out)[:60]
            raise SettingError(f"Hàm thưởng '{name}' phải trả về list {n} phần tử (float hoặc None) {where}, nhận "
                             f"được {got} / reward function '{name}' must return a list of {n} floats or None "
                             f"{where}, got {got}")
        vals = []
        for j, v in enumerate(out):
            if v is None:
                vals.append(math.nan)
            elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
                vals.append(float(v))
            else:
                raise SettingError(f"Hàm thưởng '{name}' trả về phần tử [{j}] = {v!r} không phải số hữu hạn hay None "
                                 f"{where} / reward function '{name}' returned element [{j}] = {v!r}, not a finite "
                                 f"number or None {where}")
        return vals

    def probe(self, prompts, columns):
        """Call every reward function once on the first prompt with an empty completion, before any compute,
        so that a function returning the wrong length or a non-number fails at once (a function that raises
        on that probe is checked at its first real call)."""
        for i in range(len(self.funcs)):
            self._call(i, prompts[:1], [""], columns[:1], "(kiểm tra trước / probe)", probe=True)

    def score(self, prompts, completions, columns, step):
        """(R (B,), per-source rewards (n_sources, B)) as host float64 arrays; NaN = no reward."""
        np = host_np
        where = f"(bước / step {step + 1})"
        rows = [self._call(i, prompts, completions, columns, where) for i in range(len(self.funcs))]
        if self.model is not None:
            tok = resolve_tokenizer(None, self.model)
            ids = [encode_for_scoring(c, tok, self.max_len, prompt=p) for p, c in zip(prompts, completions)]
            rows.append(score_ids(self.model, ids, self.batch_size, tok.pad_token_id))
        per = np.asarray(rows, dtype=np.float64)  # (n_sources, B)
        w = np.asarray(self.weights, dtype=np.float64)[:, None]  # (n_sources, 1)
        any_ok = (~np.isnan(per)).any(axis=0)  # (B,)
        total = np.where(np.isnan(per), 0.0, per * w).sum(axis=0)  # (B,) nansum of the weighted rewards
        return np.where(any_ok, total, np.nan), per


def _nanstd(x):
    np = host_np
    x = x[~np.isnan(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def reward_stats(R, per, names, G) -> dict:
    """TRL's reward metrics of one rollout as (value, 1) pairs: reward, reward_std (mean of the group
    stds), frac_reward_zero_std, rewards/<source>/mean|std."""
    np = host_np
    groups = R.reshape(-1, G)  # (P, G)
    stds = np.asarray([_nanstd(g) for g in groups])  # (P,)
    ok = ~np.isnan(stds)
    out = {"reward": float(np.nanmean(R)) if (~np.isnan(R)).any() else math.nan,
           "reward_std": float(stds[ok].mean()) if ok.any() else math.nan,
           "frac_reward_zero_std": float((ok & (np.abs(np.where(ok, stds, 1.0)) <= 1e-8)).mean())}
    for name, row in zip(names, per):
        has = ~np.isnan(row)
        out[f"rewards/{name}/mean"] = float(row[has].mean()) if has.any() else math.nan
        out[f"rewards/{name}/std"] = _nanstd(row)
    return {k: (v, 1) for k, v in out.items() if v == v}


def completion_stats(rollout) -> dict:
    """Completion-length metrics (TRL's completions/*) as (value, 1) pairs; clipped = no EOS."""
    n = rollout.lengths
    return {"completions/mean_length": (float(n.mean()), 1), "completions/min_length": (float(n.min()), 1),
            "completions/max_length": (float(n.max()), 1),
            "completions/clipped_ratio": (float((~rollout.has_eos).mean()), 1)}


def reward_stat_keys(names) -> tuple:
    return ("reward", "reward_std", "frac_reward_zero_std", *(f"rewards/{n}/{s}" for n in names
                                                              for s in ("mean", "std")),
            "completions/mean_length", "completions/min_length", "completions/max_length",
            "completions/clipped_ratio")


# ============================ completions as token rows ============================================

def completion_batch(items, pad_id):
    """Rows prompt + completion of completion items ({"prompt_ids", "completion_ids", "mask"}), right-padded.

    Returns backend arrays ids (B, L) int64, attention (B, L) int64, targets (B, L−1) int64 (ids shifted:
    targets[:, j] is the token logits[:, j] predicts) and cmask (B, L−1) float, 1 exactly where the
    target is a completion token whose mask is 1 (spec/rl.md §1; prompt and padding positions 0)."""
    be = get_backend()
    xp = be.xp
    seqs = [list(e["prompt_ids"]) + list(e["completion_ids"]) for e in items]
    ids, att = pad_batch(seqs, pad_id)
    L = len(ids[0])
    cm = [[0] * (L - 1) for _ in items]
    for row, e in zip(cm, items):
        start = len(e["prompt_ids"]) - 1  # logits at prompt_len − 1 + t predict completion token t
        row[start:start + len(e["mask"])] = e["mask"]
    ids_a = xp.asarray(ids, dtype=xp.int64)  # (B, L)
    return ids_a, xp.asarray(att, dtype=xp.int64), ids_a[:, 1:], xp.asarray(cm, dtype=be.dtype)


def scatter_tokens(items, key, L1):
    """Per-completion-token host lists items[i][key] laid out as (B, L−1) like completion_batch's cmask."""
    xp = get_backend().xp
    out = [[0.0] * L1 for _ in items]
    for row, e in zip(out, items):
        start = len(e["prompt_ids"]) - 1
        row[start:start + len(e[key])] = e[key]
    return xp.asarray(out, dtype=get_backend().dtype)


def completion_logps(model, items, pad_id, temperature, batch_size) -> list:
    """Per-token log-probs (spec/rl.md §8, at `temperature`) of each item's completion tokens under
    `model`, in eval mode without a graph: a host list of floats per item (length = its completion)."""
    out = []
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for i in range(0, len(items), batch_size):
                chunk = items[i:i + batch_size]
                ids, att, targets, _ = completion_batch(chunk, pad_id)
                lp = losses.token_logps(model(ids, attention_mask=att)[:, :-1], targets, temperature).numpy()
                for row, e in zip(lp, chunk):
                    s = len(e["prompt_ids"]) - 1
                    out.append([float(v) for v in row[s:s + len(e["completion_ids"])]])
    finally:
        model.train(was_training)
    return out


def weights_sha256(model, base_only: bool = False) -> str:
    """Fingerprint of a model's weights (the reference a resumed run must use again): every parameter
    (adapters included), or with `base_only` the base parameters alone — the reference a LoRA model is
    with its adapters switched off, which hashes as a plain copy of that base would."""
    be = get_backend()
    params = model.base_parameters() if base_only else model.named_parameters()
    h = hashlib.sha256()
    for name, p in params.items():
        h.update(name.encode("utf-8"))
        h.update(host_np.ascontiguousarray(be.to_numpy(p.data)).tobytes())
    return h.hexdigest()


# ============================ the trainers' common part ============================================

class OnlineTrainerBase(TrainerBase):
    """huan_luyen and the rollout of GRPO, RLOO and online DPO. A subclass sets KIND, the sampling
    settings (max_completion_length, temperature, top_k, top_p, mask_truncated_completions), `_group`
    (completions per prompt), `_needs_ref()`, `_stat_keys(names)`, `_history_keys(names)`,
    `_prepare(items, rollout, k)` and `_micro_step(model, batch, denominator)`."""

    KIND = None
    mask_truncated_completions = False

    def _loop_settings(self, prompts_per_batch):
        return LoopSettings(epochs=self.so_vong, batch_size=prompts_per_batch,
                            accumulation=self.gradient_accumulation, lr=self.toc_do_hoc,
                            weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio,
                            clip=self.gradient_clip, logging_steps=self.logging_steps, seed=self.seed)

    def _reference(self, model, ref_model, resume):
        """The frozen reference and its fingerprint, checked against a resumed run's; (None, None) when β
        makes it unneeded. With ref_model=None: for a model with LoRA adapters, None — `_reference_policy`
        then runs `model` itself with its adapters switched off (no second copy; the frozen base is
        hashed) — else a copy of `model` as given."""
        if not self._needs_ref():
            return None, None
        if ref_model is model:
            raise SettingError("'ref_model' không được là cùng một đối tượng với 'model' (mô hình tham chiếu phải "
                             "đóng băng); truyền None để dùng bản sao (hoặc mô hình gốc khi tắt adapter LoRA) "
                             "/ 'ref_model' must not be 'model' itself; pass None for a frozen copy (the base "
                             "with its adapters switched off for a LoRA model)")
        if ref_model is not None:
            check_model(ref_model, "ref_model")
            if ref_model.config.vocab_size != model.config.vocab_size:
                raise SettingError(f"'ref_model' có vocab_size {ref_model.config.vocab_size} khác 'model' "
                                 f"({model.config.vocab_size}) / vocab sizes differ")
        if ref_model is None and model.has_adapters:
            ref, sha = None, weights_sha256(model, base_only=True)
        else:
            ref = ref_model if ref_model is not None else model.copy()
            sha = weights_sha256(ref)
        saved = resume.extra.get("ref_sha256") if resume is not None else None
        if saved is not None and saved != sha:
            raise CheckpointError(
                "Mô hình tham chiếu khác lần chạy trong checkpoint: hãy truyền lại đúng mô hình ban đầu (ref_model, "
                "hoặc model ban đầu khi ref_model=None) / the reference model differs from the checkpoint's run: "
                "pass the same initial model again (ref_model, or the initial model when ref_model=None)")
        return ref, sha

    def _reference_policy(self):
        """Context: the reference of this run in eval mode (evaluate it under no_grad) — the explicit or
        copied reference, or the policy itself with its LoRA adapters switched off (trainers/base.py's
        `reference_policy`; the policy samples its rollouts outside this block, adapters on)."""
        c = self._ctx
        return reference_policy(c["model"], c["ref"])

    def huan_luyen(self, model, prompts, ham_thuong=None, reward_model=None, *, trong_so_thuong=None,
                   ref_model=None, tokenizer=None, callback=None, thu_muc_checkpoint=None, luu_moi=None,
                   giu_lai=2, tiep_tuc_tu=None, bo_qua_batch_loi=False) -> dict:
        """Huấn luyện / train `model` on `prompts` with rewards from `ham_thuong` and/or `reward_model`.

        prompts: strings or dicts {"prompt": str, other keys → reward-function keyword lists}. ham_thuong: a
        function or a list f(prompts, completions, **columns) -> list[float | None] (texts in, one reward
        per completion out; None = no opinion). reward_model: a model trained by RewardModel (score head);
        it scores the templated prompt + completion as in its training. trong_so_thuong: one weight per
        source (functions in order, then the reward model). ref_model: the frozen reference when β > 0
        (None = a copy of `model` as given, or for a model with LoRA adapters the model itself with its
        adapters switched off, as TRL does with PEFT; a resumed run needs the same one). Everything is checked before
        any compute. Returns tong_thoi_gian, so_epoch, global_step, train_loss_min, final_reward and
        history (see spec/api.md); checkpoint keywords as SFTTrainer."""
        check_model(model)
        check_callback(callback)
        if reward_model is model:
            raise SettingError("'reward_model' không được là 'model' / 'reward_model' must not be 'model' itself")
        sources = RewardSources(ham_thuong, reward_model, trong_so_thuong, max_seq_length=self.max_seq_length,
                                batch_size=self._prompts_per_batch() * self._group)
        ck, skip = self._checkpoint_options(self.KIND, thu_muc_checkpoint=thu_muc_checkpoint, luu_moi=luu_moi,
                                            giu_lai=giu_lai, tiep_tuc_tu=tiep_tuc_tu,
                                            bo_qua_batch_loi=bo_qua_batch_loi)
        tok = resolve_tokenizer(tokenizer, model)
        max_len = effective_max_len(self.max_seq_length, model)
        if max_len - self.max_completion_length < 2:
            raise SettingError(f"'max_completion_length' ({self.max_completion_length}) phải nhỏ hơn min(max_seq_length, "
                             f"n_positions) = {max_len} ít nhất 2 / 'max_completion_length' must leave at least 2 "
                             f"prompt tokens within min(max_seq_length, n_positions) = {max_len}")
        examples, texts = prepare_prompts(prompts, tok, max_len - self.max_completion_length)
        columns = record_columns(prompts)
        sources.probe(texts, columns)
        ref, sha = self._reference(model, ref_model, ck.resume)
        self._ctx = {"model": model, "ref": ref, "tok": tok, "sources": sources, "texts": texts,
                     "columns": columns, "pad": tok.pad_token_id if tok.pad_token_id is not None else 0,
                     "eos": eos_ids(model)}
        names = sources.names
        try:
            run = run_loop(model=model, examples=examples, settings=self._loop_settings(self._prompts_per_batch()),
                           micro_step=lambda batch, d: self._micro_step(model, batch, d), weight_of=self._weight_of,
                           stat_keys=self._stat_keys(names), callback=callback, checkpoint=ck, skip_nonfinite=skip,
                           extra_state={"ref_sha256": sha} if sha else None, prepare_window=self._rollout)
        finally:
            self._ctx = None
        rewards = run["history"].get("reward", [])
        return self._finish(run, self._history_keys(names), final_reward=rewards[-1] if rewards else None)

    def _prompts_per_batch(self) -> int:
        return self.kich_thuoc_batch // self._group

    def _rollout(self, window, k):
        """The loop's prepare_window: sample, decode and score the window's completions (rollout k), then
        let the trainer turn them into micro-batches of training items."""
        c = self._ctx
        prompts = [e for mb in window for e in mb]
        G = self._group
        ro = sample_rollouts(c["model"], [e["prompt_ids"] for e in prompts], num_generations=G,
                             max_completion_length=self.max_completion_length, temperature=self.temperature,
                             top_k=self.top_k, top_p=self.top_p, eos_token_id=sorted(c["eos"]), seed=self.seed,
                             rollout_index=k, mask_truncated_completions=self.mask_truncated_completions)
        comps = ro.completions()
        texts = [c["tok"].decode([t for t in row if t not in c["eos"]], skip_special_tokens=True) for row in comps]
        idx = [prompts[r // G]["index"] for r in range(len(comps))]
        R, per = c["sources"].score([c["texts"][i] for i in idx], texts, [c["columns"][i] for i in idx], k)
        items = [{"index": i, "prompt_ids": prompts[r // G]["prompt_ids"], "completion_ids": comps[r],
                  "mask": ro.completion_mask[r, :len(comps[r])].tolist(), "has_eos": bool(ro.has_eos[r])}
                 for r, i in enumerate(idx)]
        out, stats = self.scored_window(items, R, k, [len(mb) for mb in window])
        stats.update(reward_stats(R, per, c["sources"].names, G))
        stats.update(completion_stats(ro))
        return out, stats

    def scored_window(self, items, R, k, prompts_per_micro_batch):
        """The trainer's `_prepare` of a scored rollout (items in row order, rewards R (B,)), then its
        items back into the window's micro-batches (`prompts_per_micro_batch[i]` prompts each, in prompt
        order), each item told the window's micro-batch count `k_micro`: (micro-batches, stats). The
        conformance reference enters here with the fixed rollouts of a trainer vector."""
        flat, stats = self._prepare(items, R, k)
        out, pos = [], 0
        per_prompt = len(flat) // sum(prompts_per_micro_batch)
        for n_prompts in prompts_per_micro_batch:
            n = n_prompts * per_prompt
            out.append(flat[pos:pos + n])
            pos += n
        for mb in out:
            for e in mb:
                e["k_micro"] = len(out)
        return out, stats
