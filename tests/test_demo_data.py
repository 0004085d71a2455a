"""The bundled demo data (vietnamese_ai_ref/data/*.jsonl) is exactly what scripts/make_demo_data.py
writes, and is well formed: right keys, non-empty NFC strings, held-out prompts disjoint from train."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "make_demo_data.py"
DATA = ROOT / "vietnamese_ai_ref" / "data"
FILES = ("sft_train.jsonl", "sft_val.jsonl", "pref_train.jsonl", "pref_heldout.jsonl", "manifest.json")
SFT_KEYS = ("instruction", "input", "output")
PREF_KEYS = ("prompt", "chosen", "rejected")

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="needs a checkout (scripts/ is not installed)")


def load(name):
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_committed_files_equal_generator_output(tmp_path):
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, capture_output=True)
    for name in FILES:
        assert (DATA / name).read_bytes() == (tmp_path / name).read_bytes(), (
            f"{name} differs from the generator's output; run: python scripts/make_demo_data.py")


def test_generator_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        subprocess.run([sys.executable, str(SCRIPT), "--out", str(d)], check=True, capture_output=True)
    for name in FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_check_mode_passes_on_committed_files():
    r = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_manifest_matches_files():
    m = json.loads((DATA / "manifest.json").read_text(encoding="utf-8"))
    assert m["generator"] == "scripts/make_demo_data.py"
    assert isinstance(m["seed"], int)
    assert set(m["files"]) == set(FILES[:-1])
    for name, info in m["files"].items():
        data = (DATA / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"]
        assert info["records"] == len(load(name))


@pytest.mark.parametrize("name,keys", [
    ("sft_train.jsonl", SFT_KEYS), ("sft_val.jsonl", SFT_KEYS),
    ("pref_train.jsonl", PREF_KEYS), ("pref_heldout.jsonl", PREF_KEYS),
])
def test_records_well_formed(name, keys):
    recs = load(name)
    assert len(recs) >= 40
    for r in recs:
        assert tuple(r) == keys
        for k in keys:
            v = r[k]
            assert isinstance(v, str)
            assert v == unicodedata.normalize("NFC", v)
            assert v == v.strip()
            if k != "input":
                assert v, (name, r)
        if "chosen" in r:
            assert r["chosen"] != r["rejected"]
            # prompt + longer answer fits a 128-position model with the prompt template around it
            size = len(r["prompt"].encode()) + max(len(r["chosen"].encode()), len(r["rejected"].encode()))
        else:
            size = sum(len(r[k].encode()) for k in keys)
        assert size <= 90, (name, r)


def test_split_sizes():
    assert 300 <= len(load("sft_train.jsonl")) <= 600
    assert 30 <= len(load("sft_val.jsonl")) <= 100
    assert 300 <= len(load("pref_train.jsonl")) <= 600
    assert 60 <= len(load("pref_heldout.jsonl")) <= 100


def test_heldout_prompts_disjoint_from_training():
    held = {r["prompt"] for r in load("pref_heldout.jsonl")}
    assert len(held) == len(load("pref_heldout.jsonl"))
    assert not held & {r["prompt"] for r in load("pref_train.jsonl")}
    sft_prompts = {r["instruction"] for r in load("sft_train.jsonl") if not r["input"]}
    assert not held & sft_prompts
    val = {(r["instruction"], r["input"]) for r in load("sft_val.jsonl")}
    assert not val & {(r["instruction"], r["input"]) for r in load("sft_train.jsonl")}


def test_chosen_is_house_style():
    for name in ("pref_train.jsonl", "pref_heldout.jsonl"):
        for r in load(name):
            assert r["chosen"].startswith("Dạ, ") and r["chosen"].endswith(" ạ."), r
