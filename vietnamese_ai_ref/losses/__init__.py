"""losses: the formulas of the spec, one pure function each, over arrays and autograd Tensors.

What it is for: what every trainer computes and every conforming implementation must reproduce —
`offline.py`, the offline alignment losses of spec/losses.md (sequence log-probability, SFT, DPO and its
rewards, the reward model, the normalised score, the reduction over an effective batch), and `rl.py`,
the online-RL formulas of spec/rl.md (GRPO and RLOO advantages and losses, the online-DPO pair choice,
token log-probabilities and entropy). The trainers call exactly these functions, so the golden vectors
certify what the trainers run. Every public name is available as `vietnamese_ai_ref.losses.<name>`.
What it is not: a trainer or a sampler; nothing here runs a model or steps an optimiser. It imports
`backends` and `core` only.
"""

from .offline import *  # noqa: F401,F403
from .offline import __all__ as _offline_all
from .rl import *  # noqa: F401,F403
from .rl import __all__ as _rl_all

__all__ = list(_offline_all) + list(_rl_all)
