"""`python -m vietnamese_ai_ref.conformance ADAPTER`: the conformance runner (see runner.py)."""

import sys

from .runner import main

sys.exit(main())
