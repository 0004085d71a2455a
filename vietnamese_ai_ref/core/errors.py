"""The catalogued exceptions (spec/errors.md), defined once for every layer.

What it is for: the error types a user may meet and a caller may catch — bad data or settings
(`DataError`), unreadable or mismatched model folders and checkpoints (`CheckpointError`), tokenizer
failures (`TokenizerError`), a loss or gradient that became NaN/inf (`NonFiniteError`), JSON/JSONL files
that cannot be read (`JsonlError`). Each message names what was expected and what came, Vietnamese
first with English alongside.
What it is not: a place for internal consistency checks (those are `InternalError`: a library bug,
never the user's fault) or for the command line's exit codes (app/cli.py maps these types to codes).
"""


class DataError(ValueError):
    """A record or an argument is invalid. The message names record index, key, expected and received."""


class CheckpointError(ValueError):
    """A model folder or training checkpoint cannot be written or read (missing/unexpected/mis-shaped
    tensor, bad config, a checkpoint that does not match the run)."""


class TokenizerError(ValueError):
    """A tokenizer cannot encode, decode, save or load what it was given."""


class JsonlError(ValueError):
    """A JSON or JSONL file cannot be read: the message names the file and the line number."""


class NonFiniteError(FloatingPointError):
    """A loss or gradient norm became NaN/inf; raised before the weights change."""


class InternalError(RuntimeError):
    """A consistency check inside the library failed: a bug to report, not a mistake in the input."""


class SettingError(DataError):
    """A setting has a bad value: a trainer or pipeline parameter, a generation setting, a command-line
    option. The message names the setting as the caller spells it, what was expected and what came."""
