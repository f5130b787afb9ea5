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

        from pfkit.distributed import full_value  # FSDP: gather sharded parameters/gradients (collective)

        os.makedirs(self.out, exist_ok=True)
        model = getattr(pl_module, "model", None) or pl_module.policy  # GRPO | PF-PPO
        b = getattr(pl_module, "_last_batch", None)
        state = {
            "sampler": pl_module.sampler.state_dict() if getattr(pl_module, "sampler", None) else None,
            "batch": None if b is None else {
                "prompt_ids": b.prompt_ids, "rewards": b.rewards, "payload": b.payload, "rollouts": b.rollouts,
                "generated_ids": b.generated_ids, "generated_rewards": b.generated_rewards},
            "grads": {n: full_value(p.grad.detach()).clone() for n, p in model.named_parameters() if p.grad is not None},
            "params": {n: full_value(p.detach()).clone() for n, p in model.named_parameters()},
            "param_types": {type(p).__name__ for p in model.parameters()},  # DTensor when FSDP-sharded
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


def fsdp_helpers_worker(rank: int, port: int, folder: str, out: str) -> None:
    """One of 2 gloo processes (torch.multiprocessing.spawn) checking pfkit.distributed's FSDP2 helpers on the
    tiny GPT-2 in ``folder``; writes what it saw to ``out``-r{rank}.pt for the test to assert on."""
    import torch
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from pfkit import distributed as dist
    from pfkit.models import load_policy

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        ref, _ = load_policy(folder)
        model, _ = load_policy(folder)
        mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("data_parallel",))
        dist.fully_shard_models(model, mesh=mesh)
        dist.fully_shard_models(model, mesh=mesh)  # idempotent
        units = sorted(type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule))
        local = sum(p.to_local().numel() for p in model.parameters())
        ids = torch.randint(5, 200, (2, 7), generator=torch.Generator().manual_seed(0))
        outs = []
        with dist.gathered_params(model):
            for _ in range(1 + 2 * rank):  # ranks run different numbers of forwards: no collective inside
                with torch.no_grad():
                    outs.append(model(input_ids=ids).logits)
        with torch.no_grad():
            want = ref(input_ids=ids).logits
        state = dist.full_state_dict(model)
        # after the block the weights are sharded again and training forwards/backwards still work
        model(input_ids=ids, labels=ids).loss.backward()
        torch.save({"units": units, "local": local, "full": sum(p.numel() for p in ref.parameters()),
                    "max_err": max(float((o - want).abs().max()) for o in outs), "n_out": len(outs),
                    "state_keys": sorted(state), "state_equal": bool(state) and all(
                        torch.equal(state[k], v) for k, v in ref.state_dict().items() if k in state),
                    "sharded_after": all(type(p).__name__ == "DTensor" for p in model.parameters()),
                    "grads": all(p.grad is not None for p in model.parameters())}, f"{out}-r{rank}.pt")
    finally:
        tdist.destroy_process_group()
