#!/usr/bin/env python3
"""Write the bundled Vietnamese demo data of vietnamese_ai_ref (deterministic, stdlib only).

What it is for: small, licence-clean data written by this project that a tiny byte-level
transformer (vocab 259) can learn from in about a minute per stage on a CPU:

* ``sft_train.jsonl`` / ``sft_val.jsonl`` -- {"instruction", "input", "output"}; 75% of the outputs
  are in a *neutral* style ("3 + 4 = 7."), 25% in the polite house style (see SFT_POLITE_SHARE).
* ``pref_train.jsonl`` / ``pref_heldout.jsonl`` -- {"prompt", "chosen", "rejected"}; "chosen" is the
  polite house style ("Dạ, 3 + 4 = 7 ạ."), "rejected" is one of four kinds: the neutral SFT answer,
  a curt wrong guess, a curt refusal, or the polite style with a wrong answer.
* ``manifest.json`` -- counts, seed, sha256 of each file, the generator's name.

What it is not: a benchmark of knowledge; the facts come from a small closed set.

Usage::

    python scripts/make_demo_data.py            # rewrite vietnamese_ai_ref/data/
    python scripts/make_demo_data.py --out DIR  # write somewhere else
    python scripts/make_demo_data.py --check    # exit 1 if the committed files differ

The random numbers come from a SplitMix64 generator written here (not ``random``), so the output
is byte-identical on every Python version and platform.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import unicodedata
from pathlib import Path

SEED = 20240607
GENERATOR = "scripts/make_demo_data.py"
FORMAT_VERSION = 1
# prompt + answer in UTF-8 bytes: with the prompt template of spec/data.md (33 bytes) and <bos>, <eos>
# every example fits a model with 128 positions, untruncated.
MAX_BYTES = 90
DATA_FILES = ("sft_train.jsonl", "sft_val.jsonl", "pref_train.jsonl", "pref_heldout.jsonl")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "vietnamese_ai_ref" / "data"

_MASK = (1 << 64) - 1


class SplitMix64:
    """A tiny, fully specified PRNG: identical streams on every Python version."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Uniform integer in [0, n) by rejection sampling (no modulo bias)."""
        if n <= 0:
            raise ValueError("n must be positive")
        limit = ((1 << 64) // n) * n
        while True:
            x = self.next64()
            if x < limit:
                return x % n

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def nbytes(s: str) -> int:
    return len(s.encode("utf-8"))


def lower_first(s: str) -> str:
    return s[:1].lower() + s[1:]


# ---------------------------------------------------------------------------------------------
# Task families. Each item is one fact with its neutral answer ("core", no final period), the
# wrong values a curt guess may use, a polite-but-wrong core, and its prompt templates.
# ---------------------------------------------------------------------------------------------

CAPITALS = [
    ("Việt Nam", "Hà Nội"),
    ("Lào", "Viêng Chăn"),
    ("Campuchia", "Phnôm Pênh"),
    ("Thái Lan", "Băng Cốc"),
    ("Trung Quốc", "Bắc Kinh"),
    ("Nhật Bản", "Tokyo"),
    ("Hàn Quốc", "Seoul"),
    ("Pháp", "Paris"),
    ("Anh", "Luân Đôn"),
    ("Đức", "Berlin"),
    ("Ý", "Rôma"),
    ("Nga", "Mát-xcơ-va"),
    ("Ai Cập", "Cairo"),
    ("Indonesia", "Jakarta"),
]

COLOURS = [
    ("lá cây", "xanh"),
    ("cỏ", "xanh"),
    ("bầu trời", "xanh"),
    ("máu", "đỏ"),
    ("cà chua chín", "đỏ"),
    ("tuyết", "trắng"),
    ("sữa", "trắng"),
    ("muối", "trắng"),
    ("than", "đen"),
    ("con quạ", "đen"),
    ("chuối chín", "vàng"),
    ("nghệ", "vàng"),
    ("quả cam", "cam"),
    ("cà rốt", "cam"),
]
COLOUR_NAMES = ["xanh", "đỏ", "trắng", "đen", "vàng", "cam"]

OPPOSITES = [
    ("nóng", "lạnh"),
    ("cao", "thấp"),
    ("to", "nhỏ"),
    ("dài", "ngắn"),
    ("nhanh", "chậm"),
    ("sáng", "tối"),
    ("già", "trẻ"),
    ("mới", "cũ"),
    ("đúng", "sai"),
    ("vui", "buồn"),
    ("nặng", "nhẹ"),
    ("xa", "gần"),
]


def _near_wrong_numbers(value: int, lo: int = 0) -> list[int]:
    return [v for v in (value + 1, value - 1, value + 2, value - 2, value + 3) if v >= lo and v != value]


def build_items() -> dict[str, list[dict]]:
    """Every fact of every family, in a fixed order.

    The fact sets are deliberately small (about 140 facts in all) so that a tiny model sees each
    fact a few times per epoch: the held-out prompts ask known facts in new wordings.
    """
    fam: dict[str, list[dict]] = {}
    calc = ["Tự tính đi.", "Không biết.", "Chịu.", "Hỏi làm gì?"]

    def arith(a: int, b: int, value: int, sym: str, word: str, task: str) -> dict:
        wrong = _near_wrong_numbers(value)
        return {
            "core": f"{a} {sym} {b} = {value}",
            "wrong_values": [str(w) for w in wrong],
            "wrong_cores": [f"{a} {sym} {b} = {w}" for w in wrong],
            "prompts": [f"Tính {a} {sym} {b}.", f"{a} {sym} {b} bằng mấy?", f"{a} {word} {b} bằng bao nhiêu?",
                        f"{a} {word} {b} là mấy?"],
            "input_prompts": [(task, f"{a} {sym} {b}")],
            "refusals": calc,
        }

    fam["cong"] = [arith(a, b, a + b, "+", "cộng", "Tính phép cộng.") for a in range(6) for b in range(6)]
    fam["tru"] = [arith(a, b, a - b, "-", "trừ", "Tính phép trừ.") for a in range(10) for b in range(min(a, 3) + 1)]

    items = []
    cities = [c for _, c in CAPITALS]
    for country, city in CAPITALS:
        wrong = [c for c in cities if c != city]
        items.append({
            "core": f"Thủ đô là {city}",
            "wrong_values": wrong,
            "wrong_cores": [f"Thủ đô là {w}" for w in wrong],
            "prompts": [f"Thủ đô của {country} là gì?", f"{country} có thủ đô là gì?",
                        f"Cho biết thủ đô của {country}.", f"Thủ đô nước {country} là gì?"],
            "input_prompts": [("Cho biết thủ đô.", country)],
            "refusals": ["Tự tra đi.", "Không biết.", "Chịu.", "Hỏi người khác đi."],
        })
    fam["thu_do"] = items

    items = []
    for thing, colour in COLOURS:
        wrong = [c for c in COLOUR_NAMES if c != colour]
        subject = thing[:1].upper() + thing[1:]
        items.append({
            "core": f"Màu {colour}",
            "wrong_values": [f"màu {w}" for w in wrong],
            "wrong_cores": [f"Màu {w}" for w in wrong],
            "prompts": [f"{subject} có màu gì?", f"Màu của {thing} là gì?", f"{subject} thường màu gì?",
                        f"{subject} màu gì?"],
            "input_prompts": [("Cho biết màu.", thing)],
            "refusals": ["Tự nhìn đi.", "Không biết.", "Chịu.", "Hỏi làm gì?"],
        })
    fam["mau_sac"] = items

    items = []
    words = [w for pair in OPPOSITES for w in pair]
    for x, y in OPPOSITES:
        for w, o in ((x, y), (y, x)):
            wrong = [w] + [v for v in words if v not in (w, o)]  # "the word itself" is a slip
            items.append({
                "core": f"Trái nghĩa là {o}",
                "wrong_values": wrong,
                "wrong_cores": [f"Trái nghĩa là {v}" for v in wrong],
                "prompts": [f"Trái nghĩa của {w} là gì?", f"Từ nào trái nghĩa với {w}?",
                            f"Từ trái nghĩa với {w} là gì?", f"Từ ngược nghĩa với {w} là gì?"],
                "input_prompts": [("Tìm từ trái nghĩa.", w)],
                "refusals": ["Tự tra đi.", "Không biết.", "Chịu.", "Hỏi làm gì?"],
            })
    fam["trai_nghia"] = items

    items = []
    count = ["Tự đếm đi.", "Không biết.", "Chịu.", "Hỏi làm gì?"]
    for n in range(10):
        wrong = [w for w in _near_wrong_numbers(n + 1) if w != n] + [n]  # n itself is a classic slip
        items.append({
            "core": f"Đó là số {n + 1}",
            "wrong_values": [str(w) for w in wrong],
            "wrong_cores": [f"Đó là số {w}" for w in wrong],
            "prompts": [f"Số liền sau {n} là số nào?", f"Sau số {n} là số mấy?", f"Số nào liền sau {n}?",
                        f"Liền sau {n} là số mấy?"],
            "input_prompts": [("Tìm số liền sau.", str(n))],
            "refusals": count,
        })
    for n in range(1, 11):
        wrong = [w for w in _near_wrong_numbers(n - 1) if w != n] + [n]
        items.append({
            "core": f"Đó là số {n - 1}",
            "wrong_values": [str(w) for w in wrong],
            "wrong_cores": [f"Đó là số {w}" for w in wrong],
            "prompts": [f"Số liền trước {n} là số nào?", f"Trước số {n} là số mấy?", f"Số nào liền trước {n}?",
                        f"Liền trước {n} là số mấy?"],
            "input_prompts": [("Tìm số liền trước.", str(n))],
            "refusals": count,
        })
    fam["dem_so"] = items
    return fam


# Quotas per family: held-out preference prompts, SFT validation, SFT train, preference train.
QUOTAS = {
    #              heldout  val  sft_train  pref_train
    "cong":       (18,      10,  100,       100),
    "tru":        (16,      10,   95,        95),
    "thu_do":     (10,       6,   40,        40),
    "mau_sac":    (10,       6,   40,        40),
    "trai_nghia": (14,      10,   70,        70),
    "dem_so":     (12,       8,   55,        55),
}

# The style of the answers.
def neutral(core: str) -> str:
    """SFT house style: the full short sentence, no politeness."""
    return f"{core}."


def polite(core: str) -> str:
    """Preferred (chosen) house style: polite particles around the same sentence."""
    return f"Dạ, {lower_first(core)} ạ."


# Share of SFT outputs written in the polite style. The SFT model must give the polite style *some*
# probability, or DPO cannot make it the greedy answer: with none, DPO only pushes the rejected
# answers down (the implicit reward still separates the pairs) and greedy decoding stays neutral or
# degrades. With a minority share the SFT model's greedy answer is still neutral, and DPO flips it.
SFT_POLITE_SHARE = 0.25

CURT_WRONG = ["Chắc là {w}.", "Hình như {w}.", "{w} chứ gì.", "{w} hay {w2} gì đó."]

# Kinds of rejected answer and their share of the pairs (exact counts, shuffled per split).
REJECTED_KINDS = (
    ("trung_tinh", 0.30),     # neutral SFT-style answer, correct: differs from chosen in style only
    ("coc_loc_sai", 0.30),    # curt and wrong
    ("tu_choi", 0.25),        # curt refusal / rude
    ("lich_su_sai", 0.15),    # polite house style but wrong: differs in content only
)


def _sft_styles(n: int, rng: SplitMix64) -> list:
    """Exactly round(SFT_POLITE_SHARE * n) polite outputs, the rest neutral, shuffled."""
    k = int(round(SFT_POLITE_SHARE * n))
    styles = [polite] * k + [neutral] * (n - k)
    rng.shuffle(styles)
    return styles


def _kinds_for(n: int, rng: SplitMix64) -> list[str]:
    counts = [int(round(share * n)) for _, share in REJECTED_KINDS]
    counts[0] += n - sum(counts)
    kinds = [k for (k, _), c in zip(REJECTED_KINDS, counts) for _ in range(c)]
    rng.shuffle(kinds)
    return kinds


def make_rejected(item: dict, kind: str, rng: SplitMix64) -> str:
    if kind == "trung_tinh":
        return neutral(item["core"])
    if kind == "coc_loc_sai":
        w = rng.choice(item["wrong_values"])
        tpl = rng.choice(CURT_WRONG)
        if "{w2}" in tpl:
            others = [v for v in item["wrong_values"] if v != w]
            return tpl.format(w=w, w2=rng.choice(others))
        text = tpl.format(w=w)
        return text[:1].upper() + text[1:]
    if kind == "tu_choi":
        return rng.choice(item["refusals"])
    if kind == "lich_su_sai":
        return polite(rng.choice(item["wrong_cores"]))
    raise ValueError(kind)


def _take_covering(pool: list, n: int, n_items: int, what: str, strict: bool = True) -> list:
    """n prompts from pool (in pool order): first one per fact, then the rest in order.

    strict: raise unless every one of the n_items facts is covered."""
    if len(pool) < n:
        raise ValueError(f"{what}: only {len(pool)} prompts left, {n} wanted")
    seen: set[int] = set()
    first, later = [], []
    for x in pool:
        (later if x[0] in seen else first).append(x)
        seen.add(x[0])
    if strict and (len(seen) < n_items or n < n_items):
        raise ValueError(f"{what}: cannot cover all {n_items} facts with {n} prompts")
    return (first + later)[:n]


def generate(seed: int = SEED) -> tuple[dict[str, list[dict]], dict]:
    """All four splits plus the statistics for the manifest."""
    # Independent streams, so that changing one choice (say, the polite share) leaves the others alone.
    rng = SplitMix64(seed)                      # which prompt goes to which split, record order
    rng_style = SplitMix64(seed + 1)            # neutral or polite SFT outputs
    rng_rej = SplitMix64(seed + 2)              # kinds and texts of rejected answers
    families = build_items()
    splits = {name: [] for name in ("sft_train", "sft_val", "pref_train", "pref_heldout")}
    family_counts: dict[str, dict[str, int]] = {}

    for fam_name, items in families.items():
        n_held, n_val, n_sft, n_pref = QUOTAS[fam_name]
        plain = [(i, p, "") for i, it in enumerate(items) for p in it["prompts"]]
        with_input = [(i, ins, inp) for i, it in enumerate(items) for ins, inp in it["input_prompts"]]
        rng.shuffle(plain)
        rng.shuffle(with_input)
        held, plain = plain[:n_held], plain[n_held:]
        # SFT validation and SFT train draw from plain and input-style prompts alike.
        mixed = plain + with_input
        rng.shuffle(mixed)
        val, rest = mixed[:n_val], mixed[n_val:]
        # SFT train sees every fact of the family at least once (under some template), so that
        # held-out and validation prompts test new *wordings* of known facts, not unseen facts.
        sft = _take_covering(rest, n_sft, len(items), f"{fam_name}/sft_train")
        # Preference train: plain prompts that are neither held out nor in SFT validation.
        val_keys = set(val)
        pref_pool = [x for x in plain if x not in val_keys]
        pref = _take_covering(pref_pool, n_pref, len(items), f"{fam_name}/pref_train",
                              strict=False)

        for split, recs in (("sft_val", val), ("sft_train", sft)):
            for (i, ins, inp), style in zip(recs, _sft_styles(len(recs), rng_style)):
                splits[split].append((fam_name, {"instruction": ins, "input": inp,
                                                 "output": style(items[i]["core"]),
                                                 "_kind": style.__name__}))
        for split, chosen_items in (("pref_heldout", held), ("pref_train", pref)):
            for (i, prompt, _), kind in zip(chosen_items, _kinds_for(len(chosen_items), rng_rej)):
                item = items[i]
                splits[split].append((fam_name, {
                    "prompt": prompt,
                    "chosen": polite(item["core"]),
                    "rejected": make_rejected(item, kind, rng_rej),
                    "_kind": kind,
                }))
        family_counts[fam_name] = {"sft_train": len(sft), "sft_val": len(val),
                                   "pref_train": len(pref), "pref_heldout": len(held)}

    # Mix the families within each split, then strip the bookkeeping.
    out: dict[str, list[dict]] = {}
    kind_counts: dict[str, dict[str, int]] = {}
    for name, recs in splits.items():
        rng.shuffle(recs)
        clean = []
        kc: dict[str, int] = {}
        for _, rec in recs:
            kind = rec.pop("_kind")
            kc[kind] = kc.get(kind, 0) + 1
            clean.append({k: nfc(v) for k, v in rec.items()})
        out[name] = clean
        order = ["neutral", "polite"] if name.startswith("sft") else [k for k, _ in REJECTED_KINDS]
        kind_counts[name] = {k: kc.get(k, 0) for k in order}

    _validate(out)
    stats = {"families": family_counts,
             "sft_output_styles": {k: v for k, v in kind_counts.items() if k.startswith("sft")},
             "rejected_kinds": {k: v for k, v in kind_counts.items() if k.startswith("pref")}}
    return out, stats


def record_bytes(rec: dict) -> int:
    """Prompt + answer length in UTF-8 bytes (the longer answer for a preference pair)."""
    if "prompt" in rec:
        return nbytes(rec["prompt"]) + max(nbytes(rec["chosen"]), nbytes(rec["rejected"]))
    return nbytes(rec["instruction"]) + nbytes(rec["input"]) + nbytes(rec["output"])


def _validate(out: dict[str, list[dict]]) -> None:
    for name, recs in out.items():
        for rec in recs:
            if record_bytes(rec) > MAX_BYTES:
                raise ValueError(f"{name}: record longer than {MAX_BYTES} bytes: {rec}")
            if "prompt" in rec and rec["chosen"] == rec["rejected"]:
                raise ValueError(f"{name}: chosen == rejected: {rec}")
    held = {r["prompt"] for r in out["pref_heldout"]}
    train_prompts = {r["prompt"] for r in out["pref_train"]}
    sft_train_prompts = {(r["instruction"], r["input"]) for r in out["sft_train"]}
    sft_val_prompts = {(r["instruction"], r["input"]) for r in out["sft_val"]}
    if held & train_prompts or {(p, "") for p in held} & (sft_train_prompts | sft_val_prompts):
        raise ValueError("held-out preference prompts leak into a training split")
    if sft_val_prompts & sft_train_prompts:
        raise ValueError("sft_val prompts leak into sft_train")
    if len(held) != len(out["pref_heldout"]) or len(train_prompts) != len(out["pref_train"]):
        raise ValueError("duplicate preference prompts")


def to_jsonl(recs: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs).encode("utf-8")


def render(seed: int = SEED) -> dict[str, bytes]:
    """File name -> exact bytes, manifest.json included."""
    out, stats = generate(seed)
    files = {fname: to_jsonl(out[fname[:-len(".jsonl")]]) for fname in DATA_FILES}
    manifest = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "prng": "splitmix64",
        "licence": "MIT (written by the vietnamese_ai_ref project, same licence as the code)",
        "normalisation": "NFC",
        "max_prompt_answer_bytes": MAX_BYTES,
        "files": {
            fname: {
                "records": len(out[fname[:-len(".jsonl")]]),
                "sha256": hashlib.sha256(data).hexdigest(),
                "max_prompt_answer_bytes": max(record_bytes(r) for r in out[fname[:-len(".jsonl")]]),
            }
            for fname, data in files.items()
        },
        "families": stats["families"],
        "sft_polite_share": SFT_POLITE_SHARE,
        "sft_output_styles": stats["sft_output_styles"],
        "rejected_kinds": stats["rejected_kinds"],
        "rejected_kind_meaning": {
            "trung_tinh": "neutral SFT-style answer, correct (style differs from chosen)",
            "coc_loc_sai": "curt and wrong",
            "tu_choi": "curt refusal",
            "lich_su_sai": "polite house style, wrong (content differs from chosen)",
        },
    }
    files["manifest.json"] = (json.dumps(manifest, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    return files


def write(out_dir: Path, seed: int = SEED) -> dict[str, bytes]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = render(seed)
    for fname, data in files.items():
        (out_dir / fname).write_bytes(data)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the package data)")
    ap.add_argument("--seed", type=int, default=SEED, help=f"PRNG seed (default {SEED})")
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 if the files in --out differ from what would be written")
    args = ap.parse_args(argv)

    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            expected = write(Path(tmp), args.seed)
        bad = [f for f, data in expected.items()
               if not (args.out / f).is_file() or (args.out / f).read_bytes() != data]
        for f in bad:
            print(f"differs: {args.out / f}", file=sys.stderr)
        return 1 if bad else 0

    files = write(args.out, args.seed)
    manifest = json.loads(files["manifest.json"])
    for fname, info in manifest["files"].items():
        print(f"{args.out / fname}: {info['records']} records, "
              f"max {info['max_prompt_answer_bytes']} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
