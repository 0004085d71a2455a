"""Cross-check against PyTorch (a test-only oracle): a plain-torch GPT-2 written here — not
transformers — loads our model.safetensors and must give the same logits, reward scores and
gradients in float64. Optionally, when transformers happens to be installed, GPT2LMHeadModel must
load the same folder and agree on real positions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vietnamese_ai_ref.core import autograd as ag
from vietnamese_ai_ref.models.gpt2 import GPTConfig, TransformerLM

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

CFG = GPTConfig(n_positions=16, n_embd=24, n_layer=2, n_head=3, seed=7)
IDS = np.array([[257, 88, 105, 110, 32, 99, 104, 195, 160, 111], [257, 98, 225, 186, 161, 110, 256, 256, 256, 256],
                [257, 65, 256, 256, 256, 256, 256, 256, 256, 256]])
MASK = (IDS != 256).astype(np.int64)


def torch_gpt2(W, cfg, ids, mask):
    """GPT-2 in plain torch from transformers-named weights W; returns final hidden states (B, T, d)."""
    F = torch.nn.functional
    B, T = ids.shape
    d, H = cfg.n_embd, cfg.n_head
    hd = d // H
    eps = cfg.layer_norm_epsilon
    x = W["transformer.wte.weight"][ids] + W["transformer.wpe.weight"][torch.arange(T)]
    n = mask.sum(dim=1)  # real tokens per row (right padding)
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    allowed = (j <= i)[None] & ((j[None] < n[:, None, None]) | (i == j)[None])  # (B, T, T)
    for layer in range(cfg.n_layer):
        p = f"transformer.h.{layer}."
        a = F.layer_norm(x, (d,), W[p + "ln_1.weight"], W[p + "ln_1.bias"], eps)
        q, k, v = (a @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]).split(d, dim=-1)
        q, k, v = (t.view(B, T, H, hd).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
        att = att.masked_fill(~allowed[:, None], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, d)
        x = x + y @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        m = F.layer_norm(x, (d,), W[p + "ln_2.weight"], W[p + "ln_2.bias"], eps)
        m = F.gelu(m @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"], approximate="tanh")
        x = x + m @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return F.layer_norm(x, (d,), W["transformer.ln_f.weight"], W["transformer.ln_f.bias"], eps)


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.fixture
def saved(tmp_path, backend):
    m = TransformerLM(CFG)
    for p in m.parameters():  # move LN/bias away from 1/0 so every parameter matters
        p.data += backend.asarray(np.random.default_rng(1).standard_normal(p.shape) * 0.05)
    m.add_score_head(seed=2)
    m.save(tmp_path / "ckpt")
    from safetensors.torch import load_file

    W = {k: v.to(torch.float64).requires_grad_(True) for k, v in load_file(str(tmp_path / "ckpt" / "model.safetensors")).items()}
    return m, W, tmp_path / "ckpt"


def test_logits_scores_and_gradients_match_torch(saved, backend):
    m, W, _ = saved
    ids_t, mask_t = torch.from_numpy(IDS), torch.from_numpy(MASK)
    h = torch_gpt2(W, CFG, ids_t, mask_t)
    logits_t = h @ W["transformer.wte.weight"].T
    n = mask_t.sum(1)
    score_t = (h[torch.arange(3), n - 1] @ W["score.weight"].T)[:, 0]
    targets = np.where(MASK[:, 1:] == 1, IDS[:, 1:], -100)
    loss_t = torch.nn.functional.cross_entropy(logits_t[:, :-1].reshape(-1, 259), torch.from_numpy(targets).reshape(-1))
    loss_t = loss_t + (score_t * torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)).sum()
    loss_t.backward()

    logits = m(IDS, MASK)
    assert rel(logits.numpy(), logits_t.detach().numpy()) <= 1e-10  # every position, padded ones included
    score = m.score(IDS, MASK)
    assert rel(score.numpy(), score_t.detach().numpy()) <= 1e-10
    loss = ag.cross_entropy(logits[:, :-1], targets) + (score * np.array([0.5, -1.0, 2.0])).sum()
    assert abs(loss.item() - loss_t.item()) <= 1e-10 * abs(loss_t.item())
    loss.backward()
    for name, p in m.named_parameters().items():
        key = name if name == "score.weight" else "transformer." + name
        assert rel(backend.to_numpy(p.grad), W[key].grad.numpy()) <= 1e-10, name


def test_transformers_loads_our_folder(saved):
    transformers = pytest.importorskip("transformers")
    m, _, path = saved
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(path), torch_dtype=torch.float64).eval()
    with torch.no_grad():
        out = hf(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)).logits.numpy()
    ours = m(IDS, MASK).numpy()
    real = MASK == 1
    assert rel(ours[real], out[real]) <= 1e-10
    if hasattr(transformers, "GPT2ForSequenceClassification"):  # the reward head reads the same folder
        clf = transformers.GPT2ForSequenceClassification.from_pretrained(str(path), torch_dtype=torch.float64).eval()
        with torch.no_grad():
            s = clf(input_ids=torch.from_numpy(IDS), attention_mask=torch.from_numpy(MASK)).logits.numpy()[:, 0]
        assert rel(m.score(IDS, MASK).numpy(), s) <= 1e-10
