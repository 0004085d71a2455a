"""Bundled Vietnamese demo data (JSONL). Built by scripts/make_demo_data.py; data only, no code."""
