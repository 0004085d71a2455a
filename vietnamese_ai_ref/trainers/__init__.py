"""trainers: the seeds' trainers over one shared loop.

What it is for: `SFTTrainer`, `DPOTrainer`, `RewardModel`, `RLHFPipeline`, the online-RL
`GRPOTrainer`, `RLOOTrainer`, `OnlineDPOTrainer` (rollouts and rewards: `online.py`), the one training loop they
all run (`loop.py`) and the validation of their settings. Every loss, reduction and statistic is a
call to a spec function of `losses`, so the golden vectors certify what the trainers run.
What it is not: the command line or the demo (`app`), or the conformance runner.
"""
