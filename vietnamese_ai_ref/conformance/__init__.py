"""conformance: checks an implementation against spec/vectors.

What it is for: the vector codec (`codec.py`), the reference adapter (`reference.py`, whose trainer
vectors drive `trainers`' own loop, never a copy) and the runner (`runner.py`,
`python -m vietnamese_ai_ref.conformance MODULE:ADAPTER`).
What it is not: a test framework for this package's internals.
"""

from .runner import *  # noqa: F401,F403
from .runner import __all__  # noqa: F401
