"""vietnamese_ai_ref: the reference implementation of the vietnamese_ai alignment toolkit.

What it is for: the seeds' public API (SFTTrainer, DPOTrainer, RewardModel, RLHFPipeline) over a
minimal NumPy/CuPy autograd and small GPT-2 / Llama-family transformers, computing exactly what
spec/ says (spec version `SPEC_VERSION`).
What it is not: a fast production trainer; torch is never imported at run time.
"""

__version__ = "0.1.0"
SPEC_VERSION = "1.0"

from .autograd import Tensor, no_grad, tensor
from .backends import get_backend, set_backend, use_backend
from .dpo import DPOTrainer
from .gradcheck import GradcheckError, gradcheck
from .hf import from_pretrained, luu_mo_hinh, save_pretrained, tai_mo_hinh
from .llama import LlamaConfig, LlamaLM
from .model import CheckpointError, GPTConfig, TransformerLM
from .pipeline import RLHFPipeline
from .records import DataError
from .reward import RewardModel
from .sft import SFTTrainer
from .tokenizer import ByteTokenizer
from .training import NonFiniteError

__all__ = [
    # the seeds' API
    "SFTTrainer", "DPOTrainer", "RewardModel", "RLHFPipeline",
    # models, tokenizer, Hugging Face folders
    "TransformerLM", "GPTConfig", "LlamaLM", "LlamaConfig", "ByteTokenizer",
    "from_pretrained", "save_pretrained", "tai_mo_hinh", "luu_mo_hinh",
    # autograd and backends
    "Tensor", "tensor", "no_grad", "gradcheck", "get_backend", "set_backend", "use_backend",
    # errors
    "DataError", "CheckpointError", "NonFiniteError", "GradcheckError",
    "SPEC_VERSION", "__version__",
]
