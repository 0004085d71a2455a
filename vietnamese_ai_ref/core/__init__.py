"""core: the numerical heart, over the `xp` namespace the backend layer chooses.

What it is for: reverse-mode autograd (`Tensor`, primitive ops with each backward beside its forward),
the fused ops the models run (linear, causal attention, RMSNorm, rotary, SiLU) with their backward,
the optimiser (AdamW over one flat buffer, the schedule, clipping), gradcheck, and the catalogued
exceptions every layer raises.
What it is not: models, data or files; it imports only `backends` (layer order: backends → core →
text → models → losses → io → trainers → conformance → app).
"""
