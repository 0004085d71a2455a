"""models: causal language models over `core`.

What it is for: one shared causal-LM base (parameters, train/eval, copy, state dict, score head,
masks), GPT-2 (`gpt2.py`) and the Llama family (`llama.py`: Llama, Qwen2, Mistral), the KV cache and
generation over a documented decoder interface.
What it is not: file formats (Hugging Face folders and checkpoints live in `io`, which registers its
reader and writer here) or training; it imports `backends`, `core` and `text` only.
"""
