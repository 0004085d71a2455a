"""vietnamese_ai_ref: the reference implementation of the vietnamese_ai alignment toolkit.

What it is for: the seeds' public API (SFTTrainer, DPOTrainer, RewardModel, RLHFPipeline; and the online-RL
GRPOTrainer, RLOOTrainer, OnlineDPOTrainer) over a
minimal NumPy/CuPy autograd and small GPT-2 / Llama-family transformers, computing exactly what
spec/ says (spec version `SPEC_VERSION`).
What it is not: a fast production trainer; torch is never imported at run time.
"""

from ._version import SPEC_VERSION, __version__

from .core.autograd import Tensor, no_grad, tensor
from .backends import get_backend, set_backend, use_backend
from .trainers.dpo import DPOTrainer
from .trainers.grpo import GRPOTrainer
from .trainers.online_dpo import OnlineDPOTrainer
from .trainers.rloo import RLOOTrainer
from .core.gradcheck import GradcheckError, gradcheck
from .io.api import luu_mo_hinh, tai_mo_hinh
from .io.hf import from_pretrained, save_pretrained
from .models.llama import LlamaConfig, LlamaLM
from .core.errors import CheckpointError
from .models.gpt2 import GPTConfig, TransformerLM
from .trainers.pipeline import RLHFPipeline
from .core.errors import DataError
from .trainers.reward import RewardModel
from .trainers.sft import SFTTrainer
from .text.tokenizer import ByteTokenizer
from .core.errors import NonFiniteError
from .models.lora import LoraConfig, hop_nhat_lora, merge_lora, them_lora, add_lora
from .io.peft import luu_adapter, tai_adapter

__all__ = [
    # the seeds' API
    "SFTTrainer", "DPOTrainer", "RewardModel", "RLHFPipeline",
    # online RL with a reward in the loop (spec/rl.md)
    "GRPOTrainer", "RLOOTrainer", "OnlineDPOTrainer",
    # models, tokenizer, Hugging Face folders
    "TransformerLM", "GPTConfig", "LlamaLM", "LlamaConfig", "ByteTokenizer",
    "from_pretrained", "save_pretrained", "tai_mo_hinh", "luu_mo_hinh",
    # LoRA adapters (models/lora.py) and their PEFT folders (io/peft.py)
    "LoraConfig", "them_lora", "add_lora", "hop_nhat_lora", "merge_lora", "luu_adapter", "tai_adapter",
    # autograd and backends
    "Tensor", "tensor", "no_grad", "gradcheck", "get_backend", "set_backend", "use_backend",
    # errors
    "DataError", "CheckpointError", "NonFiniteError", "GradcheckError",
    "SPEC_VERSION", "__version__",
]
