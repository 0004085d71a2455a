"""The command-line tool `vietnamese-ai-ref` (also `python -m vietnamese_ai_ref`).

What it is for: `demo`, `sft`, `reward`, `dpo`, `pipeline --config FILE.toml`, `generate`, `score`,
`conformance`. Data comes from JSONL files with the seeds' keys; each training run writes a run
directory (the resolved config, `metrics.jsonl`, the checkpoint, `summary.json`). A bad argument or
file gives a one-line error naming the problem and exit code 2, never a traceback.
What it is not: the library. Every command is a thin layer over the public classes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..text.jsonl import JsonlError, read_jsonl, write_json, write_jsonl
from .rundir import Progress, make_run_dir, total_steps

EXIT_USAGE = 2


class CliError(Exception):
    """A user error: printed as one line, exit code 2."""


def _load_records(path, what):
    try:
        return read_jsonl(path)
    except JsonlError as e:
        raise CliError(f"{what}: {e}") from None


def _load_model(path, *, new_ok=False, config_overrides=None):
    from ..models.gpt2 import GPTConfig, TransformerLM

    if path is None:
        if not new_ok:
            raise CliError("cần --model DIR / --model DIR is required")
        return TransformerLM(GPTConfig(**(config_overrides or {})))
    if not os.path.isdir(path):
        raise CliError(f"--model: không tìm thấy thư mục / directory not found: {path}")
    from ..io.hf import from_pretrained

    return from_pretrained(path)  # GPT-2 or Llama-family folders, ours or transformers


def _finish(run_dir, config, entries, result, model, quiet):
    write_json(os.path.join(run_dir, "config.json"), config)
    write_jsonl(os.path.join(run_dir, "metrics.jsonl"), entries)
    summary = {k: v for k, v in result.items() if k != "history"}
    write_json(os.path.join(run_dir, "summary.json"), summary)
    if model is not None:
        model.save(os.path.join(run_dir, "model"))
    if not quiet:
        for k, v in summary.items():
            print(f"  {k}: {v}")
        print(f"Đã lưu vào / saved to: {run_dir}")


# ---------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------

def cmd_sft(a):
    from ..trainers.sft import SFTTrainer

    data = _load_records(a.data, "--data")
    val = _load_records(a.val, "--val") if a.val else None
    model = _load_model(a.model, new_ok=True, config_overrides=_model_overrides(a))
    cfg = dict(so_vong=a.so_vong, kich_thuoc_batch=a.kich_thuoc_batch, toc_do_hoc=a.toc_do_hoc,
               gradient_accumulation=a.gradient_accumulation, logging_steps=a.logging_steps, seed=a.seed,
               warmup_ratio=a.warmup_ratio, max_seq_length=a.max_seq_length)
    trainer = SFTTrainer(**cfg)
    run_dir = make_run_dir(a.out, "sft")
    bar = Progress(total_steps(len(data), a.kich_thuoc_batch, a.gradient_accumulation, a.so_vong), "SFT",
                   a.quiet, "sft")
    try:
        result = trainer.huan_luyen(model, data, du_lieu_val=val, callback=bar)
    finally:
        bar.close()
    _finish(run_dir, {"command": "sft", "data": a.data, "val": a.val, "sft": cfg}, bar.entries, result, model,
            a.quiet)


def cmd_reward(a):
    from ..trainers.reward import RewardModel

    data = _load_records(a.data, "--data")
    model = _load_model(a.model)
    cfg = dict(toc_do_hoc=a.toc_do_hoc, seed=a.seed, kich_thuoc_batch=a.kich_thuoc_batch,
               logging_steps=a.logging_steps, max_seq_length=a.max_seq_length)
    rm = RewardModel(**cfg)
    run_dir = make_run_dir(a.out, "reward")
    bar = Progress(total_steps(len(data), a.kich_thuoc_batch, 1, a.so_vong), "Reward", a.quiet, "reward")
    try:
        result = rm.huan_luyen(model, data, so_vong=a.so_vong, callback=bar)
    finally:
        bar.close()
    _finish(run_dir, {"command": "reward", "data": a.data, "reward": dict(cfg, so_vong=a.so_vong)}, bar.entries,
            result, model, a.quiet)


def cmd_dpo(a):
    from ..trainers.dpo import DPOTrainer

    data = _load_records(a.data, "--data")
    model = _load_model(a.model)
    ref = _load_model(a.ref) if a.ref else None
    cfg = dict(so_vong=a.so_vong, kich_thuoc_batch=a.kich_thuoc_batch, toc_do_hoc=a.toc_do_hoc, beta=a.beta,
               label_smoothing=a.label_smoothing, gradient_accumulation=a.gradient_accumulation,
               logging_steps=a.logging_steps, seed=a.seed, max_seq_length=a.max_seq_length)
    trainer = DPOTrainer(**cfg)
    run_dir = make_run_dir(a.out, "dpo")
    bar = Progress(total_steps(len(data), a.kich_thuoc_batch, a.gradient_accumulation, a.so_vong), "DPO",
                   a.quiet, "dpo")
    try:
        result = trainer.huan_luyen(model, ref, data, callback=bar)
    finally:
        bar.close()
    _finish(run_dir, {"command": "dpo", "data": a.data, "ref": a.ref, "dpo": cfg}, bar.entries, result, model,
            a.quiet)


PIPELINE_KEYS = {"model", "data", "sft", "dpo", "reward", "out"}


def cmd_pipeline(a):
    """pipeline --config FILE.toml: [model] (GPTConfig fields or path), [data] (sft, sft_val, preference),
    [sft], [reward], [dpo] (the trainers' parameters), out."""
    from ..models.gpt2 import GPTConfig, TransformerLM
    from ..trainers.pipeline import RLHFPipeline

    if not os.path.isfile(a.config):
        raise CliError(f"--config: không tìm thấy tệp / file not found: {a.config}")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(a.config, "rb") as f:
            cfg = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"{a.config}: TOML không hợp lệ / invalid TOML: {e}") from None
    unknown = sorted(set(cfg) - PIPELINE_KEYS)
    if unknown:
        raise CliError(f"{a.config}: khóa không hợp lệ / unknown keys {unknown}; valid: {sorted(PIPELINE_KEYS)}")
    data = cfg.get("data", {})
    for k in ("sft", "preference"):
        if k not in data:
            raise CliError(f"{a.config}: thiếu [data].{k} / missing [data].{k}")
    base = os.path.dirname(os.path.abspath(a.config))
    path = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    sft_data = _load_records(path(data["sft"]), "[data].sft")
    pref = _load_records(path(data["preference"]), "[data].preference")
    mcfg = dict(cfg.get("model", {}))
    pipe = RLHFPipeline(sft_config=cfg.get("sft"), dpo_config=cfg.get("dpo"), reward_config=cfg.get("reward"))
    if "path" in mcfg:
        model = _load_model(path(mcfg["path"]))
    else:
        try:
            model = TransformerLM(GPTConfig(**mcfg))
        except TypeError as e:
            raise CliError(f"{a.config}: [model]: {e}") from None
    reward_model = model.copy()
    run_dir = make_run_dir(a.out or cfg.get("out"), "pipeline")
    result = pipe.chay_day_du(model=model, ref_model=None, reward_model=reward_model, sft_data=sft_data,
                              preference_data=pref)
    entries = []
    for stage in ("sft", "reward", "rlhf"):
        h = result[stage]["history"]
        n = len(h["train_loss"])
        entries += [dict({k: v[i] for k, v in h.items() if len(v) == n}, stage=stage) for i in range(n)]
    summary = {k: ({kk: vv for kk, vv in v.items() if kk != "history"} if isinstance(v, dict) else v)
               for k, v in result.items()}
    write_json(os.path.join(run_dir, "config.json"), cfg)
    write_jsonl(os.path.join(run_dir, "metrics.jsonl"), entries)
    write_json(os.path.join(run_dir, "summary.json"), summary)
    model.save(os.path.join(run_dir, "policy"))
    reward_model.save(os.path.join(run_dir, "reward_model"))
    if not a.quiet:
        print(json.dumps(summary, ensure_ascii=False, indent=2))
        print(f"Đã lưu vào / saved to: {run_dir}")


def cmd_generate(a):
    model = _load_model(a.model)
    prompts = a.prompt
    if a.template:
        from ..text.records import format_prompt

        prompts = [format_prompt(p) for p in prompts]
    outs = model.sinh_van_ban(prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                              top_p=a.top_p, do_sample=a.sample, seed=a.seed)
    for p, o in zip(a.prompt, outs):
        print(json.dumps({"prompt": p, "output": o}, ensure_ascii=False))


def cmd_score(a):
    from ..trainers.reward import RewardModel

    model = _load_model(a.model)
    texts = list(a.text or [])
    if a.file:
        texts += [r.get("text", r.get("van_ban")) for r in _load_records(a.file, "--file")]
    if not texts:
        raise CliError("cần --text hoặc --file / --text or --file is required")
    for s in RewardModel().diem_danh_gia(model, texts):
        print(json.dumps(s, ensure_ascii=False))


def cmd_conformance(a):
    from .. import conformance

    return conformance.main(a.rest)


def cmd_demo(a):
    from ..app.demo import run_demo

    run_demo(out=a.out, quiet=a.quiet, quick=a.quick, seed=a.seed)


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

def _model_overrides(a):
    return {k: getattr(a, k) for k in ("n_layer", "n_embd", "n_head", "n_positions") if getattr(a, k, None)}


def _common(sp, *, out=True):
    sp.add_argument("--quiet", action="store_true", help="tắt thanh tiến trình / no progress bars")
    sp.add_argument("--seed", type=int, default=42, help="hạt giống ngẫu nhiên / random seed (42)")
    if out:
        sp.add_argument("--out", default=None, help="thư mục chạy / run directory (runs/<command>-<time>)")


def _train_args(sp, *, epochs, lr, batch, accum=True):
    sp.add_argument("--data", required=True, help="tệp JSONL / JSONL file of records")
    sp.add_argument("--so-vong", dest="so_vong", type=int, default=epochs, help=f"số epoch / epochs ({epochs})")
    sp.add_argument("--toc-do-hoc", dest="toc_do_hoc", type=float, default=lr, help=f"learning rate ({lr})")
    sp.add_argument("--kich-thuoc-batch", dest="kich_thuoc_batch", type=int, default=batch,
                    help=f"batch size ({batch})")
    if accum:
        sp.add_argument("--gradient-accumulation", dest="gradient_accumulation", type=int, default=1,
                        help="gradient accumulation steps (1)")
    sp.add_argument("--logging-steps", dest="logging_steps", type=int, default=1, help="log every N steps (1)")
    sp.add_argument("--max-seq-length", dest="max_seq_length", type=int, default=512, help="max tokens (512)")
    _common(sp)


def _add_demo(sub):
    d = sub.add_parser("demo", help="SFT → reward model → DPO trên dữ liệu demo / the end-to-end demo",
                       description="Huấn luyện một mô hình nhỏ từ đầu (SFT → RM → DPO) trên dữ liệu tiếng Việt đi kèm, "
                                   "in bảng kết quả trên tập giữ lại và vẽ curves.png. Trains a tiny model from "
                                   "scratch on the bundled data and prints held-out figures.")
    _common(d)
    d.add_argument("--quick", action="store_true", help="bản rút gọn (cho kiểm thử) / shortened run (for tests)")
    d.set_defaults(func=cmd_demo)


def _add_training(sub):
    s = sub.add_parser("sft", help="huấn luyện SFT / supervised fine-tuning",
                       description="SFT trên tệp JSONL (input_ids/labels, instruction/input/output, prompt/completion "
                                   "hoặc messages). Without --model a new small model is created.")
    s.add_argument("--model", default=None, help="thư mục checkpoint / checkpoint directory (default: a new model)")
    s.add_argument("--val", default=None, help="tệp JSONL kiểm định / validation JSONL")
    s.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=0.1, help="warmup ratio (0.1)")
    for k, t in (("n_layer", int), ("n_embd", int), ("n_head", int), ("n_positions", int)):
        s.add_argument(f"--{k.replace('_', '-')}", dest=k, type=t, default=None, help=f"{k} of a new model")
    _train_args(s, epochs=3, lr=1e-3, batch=4)
    s.set_defaults(func=cmd_sft)

    r = sub.add_parser("reward", help="huấn luyện reward model / train a reward model",
                       description="Reward model Bradley–Terry trên các cặp chosen/rejected (prompt, margin tuỳ chọn).")
    r.add_argument("--model", required=True, help="thư mục checkpoint / checkpoint directory")
    _train_args(r, epochs=1, lr=1e-4, batch=4, accum=False)
    r.set_defaults(func=cmd_reward)

    o = sub.add_parser("dpo", help="huấn luyện DPO / Direct Preference Optimization",
                       description="DPO trên các cặp prompt/chosen/rejected. Without --ref the reference is a frozen "
                                   "copy of --model.")
    o.add_argument("--model", required=True, help="thư mục checkpoint / policy checkpoint directory")
    o.add_argument("--ref", default=None, help="mô hình tham chiếu / reference checkpoint (default: copy of --model)")
    o.add_argument("--beta", type=float, default=0.1, help="KL coefficient β (0.1)")
    o.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=0.0, help="ε in [0, 0.5] (0)")
    _train_args(o, epochs=1, lr=1e-4, batch=2)
    o.set_defaults(func=cmd_dpo)

    pl = sub.add_parser("pipeline", help="SFT → RM → DPO từ tệp cấu hình / full pipeline from a TOML config",
                        description="Chạy RLHFPipeline.chay_day_du theo tệp TOML: [model], [data] (sft, preference), "
                                    "[sft], [reward], [dpo], out.")
    pl.add_argument("--config", required=True, help="tệp TOML / TOML file")
    _common(pl)
    pl.set_defaults(func=cmd_pipeline)


def _add_inference(sub):
    g = sub.add_parser("generate", help="sinh văn bản / generate text",
                       description="Sinh văn bản từ một checkpoint (greedy mặc định).")
    g.add_argument("--model", required=True, help="thư mục checkpoint / checkpoint directory")
    g.add_argument("--prompt", required=True, action="append", help="câu lệnh (lặp lại được) / prompt (repeatable)")
    g.add_argument("--no-template", dest="template", action="store_false",
                   help="không bọc prompt trong mẫu hỏi–đáp / do not wrap the prompt in the template")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=64, help="(64)")
    g.add_argument("--sample", action="store_true", help="lấy mẫu thay vì greedy / sample instead of greedy")
    g.add_argument("--temperature", type=float, default=1.0, help="(1.0)")
    g.add_argument("--top-k", dest="top_k", type=int, default=None, help="top-k")
    g.add_argument("--top-p", dest="top_p", type=float, default=None, help="top-p (nucleus)")
    _common(g, out=False)
    g.set_defaults(func=cmd_generate)

    sc = sub.add_parser("score", help="chấm điểm văn bản bằng reward model / score texts with a reward model",
                        description="In {van_ban, score, score_normalized} cho mỗi văn bản (một dòng JSON mỗi văn bản).")
    sc.add_argument("--model", required=True, help="reward model checkpoint directory")
    sc.add_argument("--text", action="append", help="văn bản (lặp lại được) / text (repeatable)")
    sc.add_argument("--file", default=None, help="JSONL với khóa 'text' / JSONL with a 'text' key")
    _common(sc, out=False)
    sc.set_defaults(func=cmd_score)

    c = sub.add_parser("conformance", help="kiểm tra một cài đặt khác với vector vàng / check an implementation",
                       description="Chạy bộ kiểm tra tương thích: vietnamese-ai-ref conformance module:adapter "
                                   "[--vectors DIR] [--only NAME]. Same as python -m vietnamese_ai_ref.conformance.")
    c.add_argument("rest", nargs=argparse.REMAINDER, help="module:adapter [options]")
    c.set_defaults(func=cmd_conformance)


def build_parser():
    p = argparse.ArgumentParser(
        prog="vietnamese-ai-ref",
        description="Bộ công cụ căn chỉnh LLM (SFT, reward model, DPO) — bản tham chiếu NumPy/CuPy. "
                    "LLM alignment toolkit (SFT, reward model, DPO), NumPy/CuPy reference implementation.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_training(sub)
    _add_inference(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    from ..text.jsonl import JsonlError as _J
    from ..text.records import DataError

    user_errors = (CliError, DataError, _J, ValueError, FileNotFoundError)
    try:
        from ..models.gpt2 import CheckpointError

        user_errors = user_errors + (CheckpointError,)
    except ImportError:
        pass
    try:
        rc = a.func(a)
    except user_errors as e:
        print(f"lỗi / error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        print("đã dừng / interrupted", file=sys.stderr)
        path = getattr(e, "checkpoint_path", None)  # set by the training loop when it saved one
        if path:
            print(f"checkpoint: {path}\nchạy tiếp / to resume (Python): "
                  f"<trainer>.huan_luyen(..., tiep_tuc_tu={path!r}) — xem spec/api.md \"Checkpoints and resume\"",
                  file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
