"""Version numbers of the library and of the spec it implements.

What it is for: one place every layer may read `__version__` and `SPEC_VERSION` from (checkpoints and
config files record them; the conformance runner compares vector files against `SPEC_VERSION`).
What it is not: anything else; it imports nothing, so importing it never starts a cycle.
"""

__version__ = "0.1.0"
SPEC_VERSION = "1.1"
