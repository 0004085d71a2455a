"""Bundled Vietnamese demo data (JSONL files), built by scripts/make_demo_data.py.

What it is for: the demo's SFT, preference and held-out splits, read with importlib.resources.
What it is not: code; nothing here imports anything.
"""
