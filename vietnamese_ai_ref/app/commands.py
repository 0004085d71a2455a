"""The subcommands of the command-line tool: what each one loads, checks, trains and writes.

What it is for: `sft`, `reward`, `dpo`, `pipeline`, `generate`, `score`, `demo` (the online-RL commands
`grpo`, `rloo`, `online-dpo` are in rl_commands.py, over these helpers). Every training command
checks everything first — the output path, the data files (each error names the option and file it came
from), the settings, the model — then runs inside a `RunDir` transaction (rundir.py): checkpoints in
`<out>.partial/checkpoints/` (`--checkpoint-every`, `--keep`, the interrupt checkpoint too), `--resume`
from there with the settings stored in its config.json, `--skip-nonfinite`, and the results renamed into
place with `summary.json` last. metrics.jsonl is rebuilt from the run's whole history, so a resumed run
writes the same bytes as an uninterrupted one.
What it is not: the parser or the exit codes (cli.py), or the library: each command is a thin layer
over the public classes.
"""

from __future__ import annotations

import json
import math
import os
import shutil

from ..core.errors import CheckpointError, DataError, SettingError
from ..io.checkpoints import tim_checkpoint
from ..text.jsonl import JsonlError, read_jsonl, write_jsonl
from .rundir import CHECKPOINTS, CliError, Progress, RunDir, history_entries, total_steps

#: options a `--resume` may give again (they change how the run is carried out, not what it computes)
RESUME_MAY_CHANGE = {"quiet", "resume", "checkpoint_every", "keep", "skip_nonfinite"}
#: options that are not stored for a resume
NOT_STORED = {"func", "_parser", "_required", "given", "quiet", "resume", "overwrite", "command"}
PATH_OPTIONS = ("data", "val", "model", "ref", "reward_model", "config", "out")


# ---------------------------------------------------------------------------------------------
# loading and checking
# ---------------------------------------------------------------------------------------------

def load_records(path, what):
    try:
        return read_jsonl(path)
    except JsonlError as e:
        raise CliError(f"{what}: {e}") from None


def check_records(prepare, records, what, path):
    """Run a records.prepare_* check on one file's records; an error names the option and the file."""
    try:
        prepare(records)
    except DataError as e:
        raise CliError(f"{what} {path}: {e}") from None


def load_model(path, *, new_ok=False, config_overrides=None, option="--model"):
    """The model at `path` (our folders or transformers'); without one, a new GPT-2 from the overrides.
    `option` is the command-line option that named `path` (for the error message)."""
    from ..models.gpt2 import GPTConfig, TransformerLM

    if path is None:
        if not new_ok:
            raise CliError("cần --model DIR / --model DIR is required")
        try:
            return TransformerLM(GPTConfig(**(config_overrides or {})))
        except (TypeError, ValueError) as e:  # GPTConfig's own checks (e.g. n_embd not divisible by n_head)
            raise SettingError(f"mô hình mới / new model: {e}") from None
    if config_overrides:
        opts = ", ".join(f"--{k.replace('_', '-')}" for k in config_overrides)
        raise CliError(f"{opts} chỉ dùng cho mô hình mới, không dùng cùng --model / only for a new model: they "
                       f"cannot be combined with --model (the folder's config.json decides)")
    gguf = path.lower().endswith(".gguf") and os.path.isfile(path)
    if not gguf and not os.path.isdir(path):
        what = "không phải thư mục hay tệp .gguf / neither a directory nor a .gguf file" if os.path.exists(path) \
            else "không tìm thấy thư mục / directory not found"
        raise CliError(f"{option}: {what}: {path}")
    from ..io.api import tai_mo_hinh

    try:
        return tai_mo_hinh(path)  # GPT-2 or Llama-family folders (ours or transformers'), or a GGUF file
    except CheckpointError:
        raise
    except Exception as e:  # safetensors' own error type for a corrupt weights file
        if type(e).__name__ != "SafetensorError":
            raise
        raise CheckpointError(f"Không đọc được / cannot read the weights in {path}: {e}") from None


def absolutize(a):
    """Paths as absolute ones, so that a stored run can be resumed from any working directory."""
    for k in PATH_OPTIONS:
        v = getattr(a, k, None)
        if isinstance(v, str):
            setattr(a, k, os.path.abspath(v))


def start(a, command) -> RunDir:
    """The run directory of a training command: a fresh, checked one; or, with --resume, the interrupted
    run's, whose stored settings replace `a`'s (giving others again is an error)."""
    if a.resume is None:
        absolutize(a)
        return RunDir.plan(a.out, command, overwrite=a.overwrite)
    rd, stored = RunDir.for_resume(a.resume, command)
    extra = sorted(a.given - RESUME_MAY_CHANGE)
    if extra:
        opts = ", ".join("--" + k.replace("_", "-") for k in extra)
        raise CliError(f"--resume lấy mọi thiết lập từ {rd.partial}/config.json; bỏ {opts} / --resume takes every "
                       f"setting from {rd.partial}/config.json; drop {opts}")
    for k, v in stored["args"].items():
        if k not in a.given and k not in NOT_STORED:
            setattr(a, k, v)
    return rd


def stored_args(a) -> dict:
    return {k: v for k, v in vars(a).items() if k not in NOT_STORED}


def checkpoint_kwargs(a, rd) -> dict:
    """The trainers' checkpoint keywords: always inside the run folder (the interrupt checkpoint too)."""
    return dict(thu_muc_checkpoint=rd.checkpoints, luu_moi=a.checkpoint_every, giu_lai=a.keep,
                tiep_tuc_tu=tim_checkpoint(rd.checkpoints) if rd.resuming else None,
                bo_qua_batch_loi=a.skip_nonfinite)


def note_on(exc, note):
    """Attach the run folder's fate to an exception; cli.main prints it on the same line."""
    if note:
        try:
            exc.run_note = note
        except AttributeError:
            pass


def run_training(a, rd, config, train, models, quiet):
    """Begin the run folder, train (train() -> (result, log entries)), commit: models, metrics, then
    summary.json last, then the rename. On any failure the partial folder is kept or removed (note_on)."""
    rd.begin(dict(config, args=stored_args(a), out=rd.final, overwrite=rd.overwrite))
    try:
        result, entries = train()
        summary = summary_of(result)

        def write(folder):
            for name, model in models.items():
                model.save(os.path.join(folder, name))
            write_jsonl(os.path.join(folder, "metrics.jsonl"), entries)

        rd.commit(write, summary)
    except BaseException as e:
        note_on(e, rd.abandon())
        raise
    if a.checkpoint_every is None:  # only the final checkpoint was written: the model folder holds it all
        shutil.rmtree(os.path.join(rd.final, CHECKPOINTS), ignore_errors=True)
    if not quiet:
        for k, v in summary.items():
            print(f"  {k}: {v}" if not isinstance(v, dict) else f"  {k}: {json.dumps(v, ensure_ascii=False)}")
        print(f"Đã lưu vào / saved to: {rd.final}")


def summary_of(result: dict) -> dict:
    return {k: ({kk: vv for kk, vv in v.items() if kk != "history"} if isinstance(v, dict) else v)
            for k, v in result.items() if k != "history"}


def with_skipped(result, trainer) -> dict:
    """The trainer's result plus the count of non-finite steps skipped (--skip-nonfinite)."""
    return dict(result, so_buoc_bo_qua=trainer.thong_ke()["so_buoc_bo_qua"])


def with_bar(total, desc, quiet, stage, fn):
    bar = Progress(total, desc, quiet, stage)
    try:
        return fn(bar)
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# training commands
# ---------------------------------------------------------------------------------------------

def model_overrides(a):
    return {k: getattr(a, k) for k in ("n_layer", "n_embd", "n_head", "n_positions") if getattr(a, k, None) is not None}


def cmd_sft(a):
    from ..text.records import prepare_sft
    from ..trainers.sft import SFTTrainer, effective_max_len

    rd = start(a, "sft")
    data = load_records(a.data, "--data")
    val = load_records(a.val, "--val") if a.val else None
    model = load_model(a.model, new_ok=True, config_overrides=model_overrides(a))
    cfg = dict(so_vong=a.so_vong, kich_thuoc_batch=a.kich_thuoc_batch, toc_do_hoc=a.toc_do_hoc,
               gradient_accumulation=a.gradient_accumulation, logging_steps=a.logging_steps, seed=a.seed,
               warmup_ratio=a.warmup_ratio, max_seq_length=a.max_seq_length)
    trainer = SFTTrainer(**cfg)
    n = effective_max_len(trainer.max_seq_length, model)
    prep = lambda recs: prepare_sft(recs, model.tokenizer, n, model.config.vocab_size)  # noqa: E731
    check_records(prep, data, "--data", a.data)
    if val is not None:
        check_records(prep, val, "--val", a.val)
    total = total_steps(len(data), a.kich_thuoc_batch, a.gradient_accumulation, a.so_vong)
    ck = checkpoint_kwargs(a, rd)

    def train():
        r = with_bar(total, "SFT", a.quiet, "sft",
                     lambda bar: trainer.huan_luyen(model, data, du_lieu_val=val, callback=bar, **ck))
        return with_skipped(r, trainer), history_entries(trainer.lay_lich_su(), "sft")

    run_training(a, rd, {"command": "sft", "data": a.data, "val": a.val, "sft": cfg}, train, {"model": model},
                 a.quiet)


def cmd_reward(a):
    from ..text.records import prepare_pairs
    from ..trainers.reward import RewardModel
    from ..trainers.sft import effective_max_len

    rd = start(a, "reward")
    data = load_records(a.data, "--data")
    model = load_model(a.model)
    cfg = dict(toc_do_hoc=a.toc_do_hoc, seed=a.seed, kich_thuoc_batch=a.kich_thuoc_batch,
               logging_steps=a.logging_steps, max_seq_length=a.max_seq_length)
    rm = RewardModel(**cfg)
    n = effective_max_len(rm.max_seq_length, model)
    check_records(lambda recs: prepare_pairs(recs, model.tokenizer, n, require_prompt=False, allow_margin=True),
                  data, "--data", a.data)
    total = total_steps(len(data), a.kich_thuoc_batch, 1, a.so_vong)
    ck = checkpoint_kwargs(a, rd)

    def train():
        r = with_bar(total, "Reward", a.quiet, "reward",
                     lambda bar: rm.huan_luyen(model, data, so_vong=a.so_vong, callback=bar, **ck))
        return with_skipped(r, rm), history_entries(rm.lay_lich_su(), "reward")

    run_training(a, rd, {"command": "reward", "data": a.data, "reward": dict(cfg, so_vong=a.so_vong)}, train,
                 {"model": model}, a.quiet)


def cmd_dpo(a):
    from ..text.records import prepare_pairs
    from ..trainers.dpo import DPOTrainer
    from ..trainers.sft import effective_max_len

    rd = start(a, "dpo")
    data = load_records(a.data, "--data")
    model = load_model(a.model)
    ref = load_model(a.ref, option="--ref") if a.ref else None
    cfg = dict(so_vong=a.so_vong, kich_thuoc_batch=a.kich_thuoc_batch, toc_do_hoc=a.toc_do_hoc, beta=a.beta,
               label_smoothing=a.label_smoothing, gradient_accumulation=a.gradient_accumulation,
               logging_steps=a.logging_steps, seed=a.seed, max_seq_length=a.max_seq_length)
    trainer = DPOTrainer(**cfg)
    if ref is not None and ref.config.vocab_size != model.config.vocab_size:
        raise CliError(f"--ref: vocab_size {ref.config.vocab_size} khác --model ({model.config.vocab_size}) "
                       f"/ vocab sizes differ")
    n = effective_max_len(trainer.max_seq_length, model)
    n = n if ref is None else min(n, ref.config.n_positions)
    check_records(lambda recs: prepare_pairs(recs, model.tokenizer, n, require_prompt=True, allow_margin=False),
                  data, "--data", a.data)
    total = total_steps(len(data), a.kich_thuoc_batch, a.gradient_accumulation, a.so_vong)
    ck = checkpoint_kwargs(a, rd)

    def train():
        r = with_bar(total, "DPO", a.quiet, "dpo",
                     lambda bar: trainer.huan_luyen(model, ref, data, callback=bar, **ck))
        return with_skipped(r, trainer), history_entries(trainer.lay_lich_su(), "dpo")

    run_training(a, rd, {"command": "dpo", "data": a.data, "ref": a.ref, "dpo": cfg}, train, {"model": model},
                 a.quiet)


def cmd_pipeline(a):
    """pipeline --config FILE.toml [--method M]: [model] (GPTConfig fields, or `path`), [data] (sft, preference),
    [sft], [reward], [dpo] (the trainers' parameters), `method` and its table [grpo] / [rloo] / [online_dpo],
    out."""
    from ..trainers.pipeline import RLHFPipeline
    from .pipeline_config import read_pipeline_config, stage3

    if a.resume is None:
        absolutize(a)
        cfg = read_pipeline_config(a.config)
        method, rl_cfg = stage3(a.config, cfg, a.method)
        rd = RunDir.plan(a.out or cfg.get("out"), "pipeline", overwrite=a.overwrite)
    else:
        rd = start(a, "pipeline")
        cfg = read_pipeline_config(a.config)
        method, rl_cfg = stage3(a.config, cfg, a.method)
    base = os.path.dirname(os.path.abspath(a.config))
    path = lambda p: p if os.path.isabs(p) else os.path.join(base, p)  # noqa: E731
    sft_data = load_records(path(cfg["data"]["sft"]), "[data].sft")
    pref = load_records(path(cfg["data"]["preference"]), "[data].preference")
    model = pipeline_model(a.config, cfg.get("model", {}), path)
    pipe = RLHFPipeline(sft_config=cfg.get("sft"), dpo_config=cfg.get("dpo"), reward_config=cfg.get("reward"),
                        phuong_phap=method, rl_config=rl_cfg if method != "dpo" else None,
                        thu_muc_checkpoint=rd.checkpoints, luu_moi=a.checkpoint_every, giu_lai=a.keep,
                        bo_qua_batch_loi=a.skip_nonfinite)
    reward_model = model.copy()
    try:
        pipe.check_run(model, None, reward_model, sft_data, pref)
    except DataError as e:
        raise CliError(f"{a.config}: {e}") from None

    def train():
        result = pipe.chay_day_du(model=model, ref_model=None, reward_model=reward_model, sft_data=sft_data,
                                  preference_data=pref, tiep_tuc=rd.resuming)
        entries = []
        for stage, tr in (("sft", pipe.sft_trainer), ("reward", pipe.reward_model),
                          ("rlhf", pipe.rl_trainer or pipe.dpo_trainer)):
            entries += history_entries(tr.lay_lich_su(), stage)
        return result, entries

    run_training(a, rd, dict(cfg, command="pipeline", method=method), train,
                 {"policy": model, "reward_model": reward_model}, a.quiet)


def pipeline_model(config_path, mcfg, path):
    from ..models.gpt2 import GPTConfig, TransformerLM

    if "path" in mcfg:
        return load_model(path(mcfg["path"]))
    try:
        return TransformerLM(GPTConfig(**mcfg))
    except (TypeError, ValueError) as e:
        raise CliError(f"{config_path}: [model]: {e}") from None


# ---------------------------------------------------------------------------------------------
# inference and the demo
# ---------------------------------------------------------------------------------------------

def check_generation(a):
    """Generation settings: finite and in range (a NaN temperature would sample garbage)."""
    def bad(opt, expected, got):
        raise SettingError(f"{opt}: cần {expected[0]}, nhận được {got!r} / expected {expected[1]}, got {got!r}")

    if a.max_new_tokens < 0:
        bad("--max-new-tokens", ("số nguyên ≥ 0", "an int ≥ 0"), a.max_new_tokens)
    low = 0.0 if not a.sample else math.ulp(0.0)
    if not math.isfinite(a.temperature) or a.temperature < low:
        bad("--temperature", ("số hữu hạn > 0 (≥ 0 khi greedy)", "a finite number > 0 (≥ 0 when greedy)"),
            a.temperature)
    if a.top_k is not None and a.top_k < 1:
        bad("--top-k", ("số nguyên ≥ 1", "an int ≥ 1"), a.top_k)
    if a.top_p is not None and not (math.isfinite(a.top_p) and 0.0 < a.top_p <= 1.0):
        bad("--top-p", ("số trong (0, 1]", "a number in (0, 1]"), a.top_p)


def cmd_generate(a):
    check_generation(a)
    model = load_model(a.model)
    prompts = a.prompt
    if a.template:
        from ..text.records import format_prompt

        prompts = [format_prompt(p) for p in prompts]
    limit = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    for i, p in enumerate(prompts):
        n = len(model.tokenizer.encode(p, add_bos=True))
        if limit is not None and n > limit:
            raise CliError(f"--prompt {i}: {n} token, dài hơn n_positions={limit} của mô hình / {n} tokens, longer "
                           f"than the model's n_positions={limit}")
    outs = model.sinh_van_ban(prompts, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                              top_p=a.top_p, do_sample=a.sample, seed=a.seed)
    for p, o in zip(a.prompt, outs):
        print(json.dumps({"prompt": p, "output": o}, ensure_ascii=False))


def cmd_score(a):
    from ..trainers.reward import RewardModel

    texts = list(a.text or [])
    if a.file:
        for i, r in enumerate(load_records(a.file, "--file")):
            t = r.get("text", r.get("van_ban"))
            if not isinstance(t, str) or not t.strip():
                raise CliError(f"--file {a.file}: bản ghi {i}: cần khóa 'text' (chuỗi không rỗng) / record {i}: "
                               f"expected a non-empty string under 'text', got {type(t).__name__}")
            texts.append(t)
    if not texts:
        raise CliError("cần --text hoặc --file / --text or --file is required")
    model = load_model(a.model)
    if not getattr(model, "has_score_head", False):
        raise CliError(f"--model {a.model}: mô hình không có đầu reward (score head) / the model has no score head: "
                       f"train it with `vietnamese-ai-ref reward` first")
    for s in RewardModel().diem_danh_gia(model, texts):
        print(json.dumps(s, ensure_ascii=False))


def cmd_conformance(a):
    from .. import conformance

    return conformance.main(a.rest)


def cmd_demo(a):
    from .demo import run_demo

    run_demo(out=a.out, quiet=a.quiet, quick=a.quick, seed=a.seed, overwrite=a.overwrite, stage3=a.stage3,
             model_path=a.model, lora=a.lora)
