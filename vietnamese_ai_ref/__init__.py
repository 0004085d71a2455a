"""vietnamese_ai_ref: the reference implementation of the vietnamese_ai alignment toolkit.

What it is for: the seeds' public API (SFTTrainer, DPOTrainer, RewardModel, RLHFPipeline) over a
minimal NumPy/CuPy autograd and a small GPT-style transformer, computing exactly what spec/ says.
What it is not: a fast production trainer; torch is never imported at run time.
"""

__version__ = "0.1.0"
SPEC_VERSION = "1.0"

from .autograd import Tensor, no_grad, tensor  # noqa: E402,F401
from .backends import get_backend, set_backend, use_backend  # noqa: E402,F401
from .gradcheck import GradcheckError, gradcheck  # noqa: E402,F401
from .records import DataError  # noqa: E402,F401
from .training import NonFiniteError  # noqa: E402,F401
from .sft import SFTTrainer  # noqa: E402,F401
from .dpo import DPOTrainer  # noqa: E402,F401
from .reward import RewardModel  # noqa: E402,F401
from .pipeline import RLHFPipeline  # noqa: E402,F401
from .model import CheckpointError, GPTConfig, TransformerLM  # noqa: E402,F401
from .tokenizer import ByteTokenizer  # noqa: E402,F401
from .llama import LlamaConfig, LlamaLM  # noqa: E402,F401
from .hf import from_pretrained, luu_mo_hinh, save_pretrained, tai_mo_hinh  # noqa: E402,F401
