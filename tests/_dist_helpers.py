"""Helpers imported by the `pfkit fit` subprocesses of tests/test_distributed*.py and tests/test_resume*.py
(they put tests/ on PYTHONPATH): a continuous verifier and a hard-kill callback."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


def digit_share(prompt: str, completion: str) -> float:
    """Reward in [0, 1]: share of digits in the completion (varies within a group, so gradients flow)."""
    return sum(c.isdigit() for c in completion) / max(len(completion), 1)


class KillAtStep(Callback):
    """SIGKILL this process when step ``step`` is about to start (the checkpoint of step - 1 is on disk):
    a hard kill, no teardown, no final checkpoint, like a preempted node."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class DumpState(Callback):
    """After every training step write this rank's view to ``DIR/state-r{rank}-s{step}.pt``: the sampler
    (tracker alpha/beta, RNG), the step's batch (GRPO: prompt ids, rewards, this rank's payload) and the
    policy's gradients and parameters, so a test can compare ranks and replay the step in one process."""

    def __init__(self, out: str):
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import torch

        os.makedirs(self.out, exist_ok=True)
        model = getattr(pl_module, "model", None) or pl_module.policy  # GRPO | PF-PPO
        b = getattr(pl_module, "_last_batch", None)
        state = {
            "sampler": pl_module.sampler.state_dict() if getattr(pl_module, "sampler", None) else None,
            "batch": None if b is None else {
                "prompt_ids": b.prompt_ids, "rewards": b.rewards, "payload": b.payload, "rollouts": b.rollouts,
                "generated_ids": b.generated_ids, "generated_rewards": b.generated_rewards},
            "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
            "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        }
        torch.save(state, os.path.join(self.out, f"state-r{trainer.global_rank}-s{trainer.global_step}.pt"))


class RecordSaves(Callback):
    """Append ``rank`` to ``FILE`` each time the reward model's ``save`` runs, so a test can see that the
    model folder was written by exactly one rank."""

    def __init__(self, file: str):
        self.file = file

    def setup(self, trainer, pl_module, stage):
        save = pl_module.rm.save

        def recorded(*args, **kwargs):
            with open(self.file, "a") as f:
                f.write(f"{trainer.global_rank}\n")
            return save(*args, **kwargs)

        pl_module.rm.save = recorded
