"""`python -m vietnamese_ai_ref`: the command-line tool (see app/cli.py)."""

import sys

from .app.cli import main

sys.exit(main())
