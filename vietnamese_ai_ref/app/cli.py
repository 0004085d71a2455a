"""The command-line tool `vietnamese-ai-ref` (also `python -m vietnamese_ai_ref`): parser and exit codes.

What it is for: `demo`, `sft`, `reward`, `dpo`, `grpo`, `rloo`, `online-dpo`, `pipeline --config FILE.toml
[--method M]`, `generate`, `score`, `conformance` (the commands themselves: commands.py, rl_commands.py). Exit codes mean something (spec/errors.md
"Exit codes of the command line"): 0 done; 2 a user or data error (bad data, settings, files, a checkpoint
that does not match), one bilingual line; 3 the environment (permission denied, disk full, read-only file
system), one line; 130 Ctrl-C and 143 SIGTERM (the same path: the training loop checkpoints the last
completed step into the run folder, then the process exits); 1 a library bug, with its traceback. Only
the documented exception types are caught. A training run never overwrites an earlier one and can be
resumed after any kill (`--resume`, rundir.py).
What it is not: the library. Every command is a thin layer over the public classes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from ..core.errors import CheckpointError, DataError, JsonlError, NonFiniteError, TokenizerError
from .commands import (cmd_conformance, cmd_demo, cmd_dpo, cmd_generate, cmd_pipeline, cmd_reward, cmd_score,
                       cmd_sft)
from .pipeline_config import STAGE3_METHODS
from .rl_commands import cmd_online
from .rundir import (ENVIRONMENT_ERRNOS, EXIT_ENVIRONMENT, EXIT_USAGE, CliError, EnvironmentProblem, Progress,
                     describe_os_error)

__all__ = ["main", "build_parser", "CliError", "Progress", "EXIT_USAGE", "EXIT_ENVIRONMENT"]

#: the documented user errors: one line, exit 2
USER_ERRORS = (CliError, DataError, JsonlError, CheckpointError, TokenizerError)


# ---------------------------------------------------------------------------------------------
# argument types
# ---------------------------------------------------------------------------------------------

def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cần số nguyên ≥ 1 / expected an int ≥ 1, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"cần số nguyên ≥ 1 / expected an int ≥ 1, got {v}")
    return v


def _finite_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"cần một số / expected a number, got {text!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"cần một số hữu hạn / expected a finite number, got {text!r}")
    return v


# ---------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------

def _common(sp, *, out=True):
    sp.add_argument("--quiet", action="store_true", help="tắt thanh tiến trình / no progress bars")
    sp.add_argument("--seed", type=int, default=42, help="hạt giống ngẫu nhiên / random seed (42)")
    if out:
        sp.add_argument("--out", default=None, help="thư mục chạy / run directory (runs/<command>-<time>); "
                                                    "must not exist or be empty")
        sp.add_argument("--overwrite", action="store_true",
                        help="thay một lần chạy đã xong ở --out / replace a finished run at --out (only a run "
                             "directory of this tool), or discard an interrupted one at <out>.partial")


def _run_args(sp, *, skip=True):
    """Checkpoint and resume options of the training commands."""
    sp.add_argument("--checkpoint-every", dest="checkpoint_every", type=_positive_int, default=None,
                    help="checkpoint mỗi N bước vào <out>.partial/checkpoints / a checkpoint every N steps "
                         "(default: only the final one and one on Ctrl-C/SIGTERM)")
    sp.add_argument("--keep", type=_positive_int, default=2, help="số checkpoint giữ lại / checkpoints kept (2)")
    sp.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="chạy tiếp một lần chạy bị ngắt / resume an interrupted run (its <out>.partial folder); "
                         "every setting comes from its config.json")
    if skip:
        sp.add_argument("--skip-nonfinite", dest="skip_nonfinite", action="store_true",
                        help="bỏ qua bước có loss/gradient NaN/inf (bo_qua_batch_loi) / skip non-finite steps")


def _train_args(sp, *, epochs, lr, batch, accum=True):
    sp.add_argument("--data", default=None, help="tệp JSONL / JSONL file of records (required)")
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
    _run_args(sp)


def _add_demo(sub):
    d = sub.add_parser("demo", help="SFT → reward model → DPO → GRPO trên dữ liệu demo / the end-to-end demo",
                       description="Huấn luyện một mô hình nhỏ từ đầu (SFT → RM → DPO → GRPO) trên dữ liệu tiếng "
                                   "Việt đi kèm, in bảng kết quả trên tập giữ lại và vẽ curves.png. Trains a tiny "
                                   "model from scratch (or yours, --model) on the bundled data and prints held-out "
                                   "figures.")
    _common(d)
    d.add_argument("--quick", action="store_true", help="bản rút gọn (cho kiểm thử) / shortened run (for tests)")
    d.add_argument("--stage3", choices=("both", "dpo", "grpo"), default="both",
                   help="giai đoạn 3: DPO rồi GRPO, hoặc chỉ một / stage 3: DPO then GRPO (both, default), or one "
                        "of them alone")
    d.add_argument("--model", default=None, metavar="PATH",
                   help="chạy trên mô hình của bạn (thư mục transformers hoặc tệp .gguf) thay cho mô hình nhỏ / run "
                        "the stages on your model (a transformers-style folder or a .gguf file)")
    d.add_argument("--lora", type=_positive_int, default=None, metavar="R",
                   help="với --model: huấn luyện adapter LoRA hạng R, hợp nhất trước khi lưu / with --model: train "
                        "LoRA adapters of rank R, merged before saving")
    d.set_defaults(func=cmd_demo, _required=())


def _add_training(sub):
    s = sub.add_parser("sft", help="huấn luyện SFT / supervised fine-tuning",
                       description="SFT trên tệp JSONL (input_ids/labels, instruction/input/output, prompt/completion "
                                   "hoặc messages). Without --model a new small model is created.")
    s.add_argument("--model", default=None, help="thư mục checkpoint / checkpoint directory (default: a new model)")
    s.add_argument("--val", default=None, help="tệp JSONL kiểm định / validation JSONL")
    s.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, default=0.1, help="warmup ratio (0.1)")
    for k in ("n_layer", "n_embd", "n_head", "n_positions"):
        s.add_argument(f"--{k.replace('_', '-')}", dest=k, type=_positive_int, default=None,
                       help=f"{k} of a new model (not with --model)")
    _train_args(s, epochs=3, lr=1e-3, batch=4)
    s.set_defaults(func=cmd_sft, _required=("data",))

    r = sub.add_parser("reward", help="huấn luyện reward model / train a reward model",
                       description="Reward model Bradley–Terry trên các cặp chosen/rejected (prompt, margin tuỳ chọn).")
    r.add_argument("--model", default=None, help="thư mục checkpoint / checkpoint directory (required)")
    _train_args(r, epochs=1, lr=1e-4, batch=4, accum=False)
    r.set_defaults(func=cmd_reward, _required=("model", "data"))

    o = sub.add_parser("dpo", help="huấn luyện DPO / Direct Preference Optimization",
                       description="DPO trên các cặp prompt/chosen/rejected. Without --ref the reference is a frozen "
                                   "copy of --model.")
    o.add_argument("--model", default=None, help="thư mục checkpoint / policy checkpoint directory (required)")
    o.add_argument("--ref", default=None, help="mô hình tham chiếu / reference checkpoint (default: copy of --model)")
    o.add_argument("--beta", type=float, default=0.1, help="KL coefficient β (0.1)")
    o.add_argument("--label-smoothing", dest="label_smoothing", type=float, default=0.0, help="ε in [0, 0.5] (0)")
    _train_args(o, epochs=1, lr=1e-4, batch=2)
    o.set_defaults(func=cmd_dpo, _required=("model", "data"))

    pl = sub.add_parser("pipeline", help="SFT → RM → DPO/GRPO/RLOO/online DPO từ tệp cấu hình / full pipeline "
                                         "from a TOML config",
                        description="Chạy RLHFPipeline.chay_day_du theo tệp TOML: [model], [data] (sft, preference), "
                                    "[sft], [reward], method (dpo|grpo|rloo|online_dpo) và bảng của nó [dpo] / [grpo] / "
                                    "[rloo] / [online_dpo], out.")
    pl.add_argument("--config", default=None, help="tệp TOML / TOML file (required)")
    pl.add_argument("--method", default=None, choices=STAGE3_METHODS,
                    help="phương pháp bước 3 / stage-3 method (default: the file's `method`, else dpo)")
    _common(pl)
    _run_args(pl)
    pl.set_defaults(func=cmd_pipeline, _required=("config",))


#: the online trainers' defaults (TRL v1.9.0's; = the constructors', tests/test_pipeline_rl.py checks)
ONLINE_DEFAULTS = {
    "grpo": dict(kich_thuoc_batch=8, toc_do_hoc=1e-6, num_generations=8, beta=0.0, max_completion_length=256,
                 temperature=1.0),
    "rloo": dict(kich_thuoc_batch=8, toc_do_hoc=1e-6, num_generations=2, beta=0.05, max_completion_length=256,
                 temperature=1.0),
    "online-dpo": dict(kich_thuoc_batch=2, toc_do_hoc=5e-7, beta=0.1, max_completion_length=64, temperature=0.9),
}


def _add_online(sub):
    """grpo, rloo, online-dpo: a policy folder, a prompts JSONL, a reward-model folder (rl_commands.py)."""
    what = {"grpo": "GRPO (Group Relative Policy Optimization)", "rloo": "RLOO (REINFORCE Leave-One-Out)",
            "online-dpo": "DPO trực tuyến / online DPO"}
    for name, d in ONLINE_DEFAULTS.items():
        o = sub.add_parser(name, help=f"huấn luyện {what[name]} với reward model / train with a reward model",
                           description=f"{what[name]}: sinh câu trả lời từ --model cho các prompt của --data (JSONL, "
                                       f"khóa 'prompt'), chấm bằng --reward-model. Samples completions of --data's "
                                       f"prompts from --model and rewards them with --reward-model.")
        o.add_argument("--model", default=None, help="thư mục policy / policy checkpoint directory (required)")
        o.add_argument("--reward-model", dest="reward_model", default=None,
                       help="thư mục reward model (từ `reward`) / reward-model directory (required)")
        o.add_argument("--ref", default=None, help="mô hình tham chiếu / reference (default: copy of --model)")
        o.add_argument("--beta", type=_finite_float, default=d["beta"], help=f"KL coefficient β ({d['beta']})")
        o.add_argument("--max-completion-length", dest="max_completion_length", type=_positive_int,
                       default=d["max_completion_length"], help=f"new tokens per completion "
                                                                f"({d['max_completion_length']})")
        o.add_argument("--temperature", type=_finite_float, default=d["temperature"], help=f"({d['temperature']})")
        o.add_argument("--top-k", dest="top_k", type=int, default=0, help="top-k (0: off)")
        o.add_argument("--top-p", dest="top_p", type=_finite_float, default=1.0, help="top-p (1.0)")
        if name == "online-dpo":
            o.add_argument("--missing-eos-penalty", dest="missing_eos_penalty", type=_finite_float, default=None,
                           help="trừ vào phần thưởng câu không có EOS / penalty for completions without EOS")
        else:
            o.add_argument("--num-generations", dest="num_generations", type=int, default=d["num_generations"],
                           help=f"completions per prompt G ({d['num_generations']}); --kich-thuoc-batch counts "
                                f"completions and must be divisible by G")
            o.add_argument("--epsilon", type=_finite_float, default=0.2, help="clip ε (0.2)")
        if name == "grpo":
            o.add_argument("--loss-type", dest="loss_type", default="dapo", help="grpo|bnpo|dr_grpo|dapo (dapo)")
            o.add_argument("--scale-rewards", dest="scale_rewards", default="group", help="group|batch|none (group)")
        _train_args(o, epochs=1, lr=d["toc_do_hoc"], batch=d["kich_thuoc_batch"])
        o.set_defaults(func=cmd_online, _required=("model", "reward_model", "data"))


def _add_inference(sub):
    g = sub.add_parser("generate", help="sinh văn bản / generate text",
                       description="Sinh văn bản từ một checkpoint (greedy mặc định).")
    g.add_argument("--model", required=True, help="thư mục checkpoint / checkpoint directory")
    g.add_argument("--prompt", required=True, action="append", help="câu lệnh (lặp lại được) / prompt (repeatable)")
    g.add_argument("--no-template", dest="template", action="store_false",
                   help="không bọc prompt trong mẫu hỏi–đáp / do not wrap the prompt in the template")
    g.add_argument("--max-new-tokens", dest="max_new_tokens", type=int, default=64, help="(64)")
    g.add_argument("--sample", action="store_true", help="lấy mẫu thay vì greedy / sample instead of greedy")
    g.add_argument("--temperature", type=_finite_float, default=1.0, help="(1.0)")
    g.add_argument("--top-k", dest="top_k", type=int, default=None, help="top-k")
    g.add_argument("--top-p", dest="top_p", type=_finite_float, default=None, help="top-p (nucleus)")
    _common(g, out=False)
    g.set_defaults(func=cmd_generate, _required=())

    sc = sub.add_parser("score", help="chấm điểm văn bản bằng reward model / score texts with a reward model",
                        description="In {van_ban, score, score_normalized} cho mỗi văn bản (một dòng JSON mỗi văn bản).")
    sc.add_argument("--model", required=True, help="reward model checkpoint directory")
    sc.add_argument("--text", action="append", help="văn bản (lặp lại được) / text (repeatable)")
    sc.add_argument("--file", default=None, help="JSONL với khóa 'text' / JSONL with a 'text' key")
    _common(sc, out=False)
    sc.set_defaults(func=cmd_score, _required=())

    c = sub.add_parser("conformance", help="kiểm tra một cài đặt khác với vector vàng / check an implementation",
                       description="Chạy bộ kiểm tra tương thích: vietnamese-ai-ref conformance module:adapter "
                                   "[--vectors DIR] [--only NAME]. Same as python -m vietnamese_ai_ref.conformance.")
    c.add_argument("rest", nargs=argparse.REMAINDER, help="module:adapter [options]")
    c.set_defaults(func=cmd_conformance, _required=())


def build_parser():
    p = argparse.ArgumentParser(
        prog="vietnamese-ai-ref",
        description="Bộ công cụ căn chỉnh LLM (SFT, reward model, DPO) — bản tham chiếu NumPy/CuPy. "
                    "LLM alignment toolkit (SFT, reward model, DPO), NumPy/CuPy reference implementation.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(sub)
    _add_training(sub)
    _add_online(sub)
    _add_inference(sub)
    for sp in sub.choices.values():
        sp.set_defaults(_parser=sp)
    return p


def _given_options(argv) -> set:
    """The options the command line names explicitly (whatever their value), read by parsing it again
    with every default suppressed."""
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    for sp in sub.choices.values():
        for action in sp._actions:
            action.default = argparse.SUPPRESS
    ns = p.parse_args(argv)
    return set(vars(ns)) - {"command", "func", "_parser", "_required"}


def _parse(argv):
    argv = sys.argv[1:] if argv is None else [str(x) for x in argv]
    a = build_parser().parse_args(argv)
    a.given = _given_options(argv)
    if getattr(a, "resume", None) is None:
        missing = [f"--{k.replace('_', '-')}" for k in a._required if getattr(a, k, None) is None]
        if missing:
            a._parser.error(f"the following arguments are required: {', '.join(missing)}")
    return a


# ---------------------------------------------------------------------------------------------
# signals and exit codes
# ---------------------------------------------------------------------------------------------

class _TermLikeInt:
    """SIGTERM takes the path of Ctrl-C: it calls whatever SIGINT handler is installed (the training loop's
    deferral, which checkpoints at the next step boundary, or Python's default, which raises
    KeyboardInterrupt). Remembers which signal came, for the exit code."""

    def __init__(self):
        self.signum = signal.SIGINT
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def _handler(self, signum, frame):
        self.signum = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler):
            handler(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def _say(message, exc):
    note = getattr(exc, "run_note", "")
    print(f"lỗi / error: {message}" + (f" — {note}" if note else ""), file=sys.stderr)


def main(argv=None) -> int:
    a = _parse(argv)
    with _TermLikeInt() as signals:
        try:
            return int(a.func(a) or 0)
        except USER_ERRORS as e:
            _say(e, e)
            return EXIT_USAGE
        except NonFiniteError as e:
            _say(f"{e} Dòng lệnh / command line: --skip-nonfinite.", e)
            return EXIT_USAGE
        except EnvironmentProblem as e:
            _say(e, e)
            return EXIT_ENVIRONMENT
        except OSError as e:
            if e.errno not in ENVIRONMENT_ERRNOS:
                raise
            _say(f"lỗi vào/ra / I/O failed: {describe_os_error(e)}", e)
            return EXIT_ENVIRONMENT
        except KeyboardInterrupt as e:
            name = "SIGTERM" if signals.signum == signal.SIGTERM else "Ctrl-C"
            path = getattr(e, "checkpoint_path", None)
            where = f"checkpoint: {path}" if path else "không có checkpoint / no checkpoint"
            note = getattr(e, "run_note", "")
            print(f"đã dừng / interrupted ({name}); {where}" + (f" — {note}" if note else ""), file=sys.stderr)
            return 128 + int(signals.signum)


if __name__ == "__main__":
    sys.exit(main())
