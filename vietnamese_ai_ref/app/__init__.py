"""app: what a person runs.

What it is for: the command-line tool (`cli.py`), the end-to-end demo (`demo.py`), run directories,
progress bars and plots.
What it is not: library code; nothing below imports it.
"""
