"""`python -m vietnamese_ai_ref`: the command-line tool (see cli.py)."""

import sys

from .cli import main

sys.exit(main())
