"""Small ``torch.distributed`` helpers that are no-ops in a single process.

Distributed RL needs things a single-process run never shows (issue #10):

* every rank rolls out *different* prompts: :func:`shard` (``ids[rank::world]``) and
  :func:`sharded_rollout`, which runs a rollout function on this rank's share and gathers the rewards
  of all shares back into the original order, so per-prompt state (VADE's Beta tracker) is updated with
  the *same* evidence on every rank and stays identical without ever being broadcast;
* metrics over the whole batch, not one rank's share: :func:`all_gather_object`, :func:`gather_cat`,
  :func:`all_reduce`;
* agreement on control flow (how many backward passes a step makes), or DDP's gradient all-reduce
  deadlocks: :func:`all_reduce` with ``op="max"``, and :func:`zero_loss` for a rank with nothing to train;
* a random stream per rank (:func:`rank_seed`, :func:`seed_rank_stream`);
* under FSDP (full sharding, torch FSDP2 through Lightning's ``ModelParallelStrategy``) every forward of a
  sharded model is a collective too: :func:`fully_shard_models`, :func:`gathered_params` around sampling,
  :func:`full_state_dict` for saving (see the section at the end).

All functions work when ``torch.distributed`` is not initialised (or world size is 1) and then do the
single-process thing, so modules call them unconditionally. Objects go through ``all_gather_object``
(pickled, CPU) because the payloads are small (rewards, counts, RNG states) and this works for gloo and
NCCL alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a process group with more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def all_gather_object(obj: Any) -> list[Any]:
    """``[obj_rank0, obj_rank1, ...]`` (``[obj]`` in a single process)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce(value: float | int | torch.Tensor, op: str = "sum") -> Any:
    """Sum / max / min / mean of a number or tensor over ranks; returns the same type as given."""
    if not is_distributed():
        return value
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN,
           "mean": dist.ReduceOp.SUM}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}")
    is_tensor = isinstance(value, torch.Tensor)
    t = value.detach().clone() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    # gloo needs CPU tensors, NCCL CUDA ones: reduce where the backend wants it
    nccl = dist.get_backend() == "nccl"
    dev = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    moved = t.to(dev)
    dist.all_reduce(moved, op=ops[op])
    if op == "mean":
        moved = moved / dist.get_world_size()
    moved = moved.to(t.device)
    if is_tensor:
        return moved
    return type(value)(moved.item()) if isinstance(value, int) and op != "mean" else float(moved.item())


def gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's tensor along dim 0 (rank order); shapes may differ in dim 0."""
    if not is_distributed():
        return tensor
    parts = all_gather_object(tensor.detach().cpu())
    return torch.cat([p.to(tensor.device) for p in parts], dim=0)


def shard(items: Sequence, rank_: int | None = None, world: int | None = None) -> list:
    """This rank's share ``items[rank::world]`` (round-robin, so shares differ by at most one item)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    return list(items)[r::w]


def sharded_rollout(ids: Sequence[int], rollout_fn: Callable[[list[int]], tuple[torch.Tensor, list]],
                    group_size: int) -> tuple[torch.Tensor, list]:
    """Roll out ``ids`` split over ranks; every rank gets all ``[len(ids), G]`` rewards, its own payloads.

    ``rollout_fn(local_ids) -> (rewards [n, G], payload)`` runs on this rank's share only
    (:func:`shard`). The rewards of all shares are gathered back into the order of ``ids``, so a
    sampler that consumes them (tracker update, zero-variance filter) makes the same decisions on every
    rank. ``payload[j]`` is ``None`` for prompts rolled out on another rank.
    In a single process this is ``rollout_fn(ids)``.
    """
    ids = list(ids)
    if not is_distributed():
        return rollout_fn(ids)
    w, r = world_size(), rank()
    local = shard(ids, r, w)
    if local:
        rewards, payload = rollout_fn(local)
        rewards = torch.as_tensor(rewards, dtype=torch.float32).reshape(len(local), group_size).cpu()
    else:
        rewards, payload = torch.zeros(0, group_size), []
    gathered = all_gather_object((ids, rewards))  # the ids ride along: a cheap sync check
    if any(g[0] != ids for g in gathered):
        raise RuntimeError(f"ranks rolled out different prompt selections {[g[0] for g in gathered]}; the "
                           "samplers are out of sync (same seed, same sampler state on every rank)")
    shares = [g[1] for g in gathered]
    full = torch.zeros(len(ids), group_size)
    out_payload: list = [None] * len(ids)
    for src, share in enumerate(shares):
        pos = list(range(src, len(ids), w))
        if len(pos) != share.shape[0]:
            raise RuntimeError(f"rank {src} returned {share.shape[0]} reward groups for {len(pos)} prompts; "
                               "every rank must see the same prompt ids (same sampler seed and state)")
        if pos:
            full[pos] = share
    for j, item in zip(range(r, len(ids), w), payload):
        out_payload[j] = item
    return full, out_payload


def rank_seed(seed: int) -> int:
    """This rank's seed for its own random stream: ``seed`` on rank 0 (= the single-process stream), a
    distinct one on every other rank."""
    return seed + 1_000_003 * rank()


def seed_rank_stream(generator: torch.Generator, seed: int) -> bool:
    """Reseed ``generator`` with :func:`rank_seed` on ranks > 0 (rank 0 keeps its stream); True if reseeded.
    Modules call it once in ``setup`` (and skip it when a checkpoint restored the rank's own stream)."""
    if rank() == 0:
        return False
    generator.manual_seed(rank_seed(seed))
    return True


def zero_loss(*models: torch.nn.Module, forward: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
    """A loss that is exactly 0 and whose backward reaches every trainable parameter of ``models``: what a
    rank with nothing left to train backpropagates, so DDP's gradient all-reduce (one per backward) stays
    in step with the other ranks. Under FSDP every forward/backward of a sharded model is a collective,
    so there ``forward()`` (the same passes the other ranks run, on a placeholder row) is used instead."""
    if forward is not None and any(is_sharded(m) for m in models):
        return forward() * 0.0
    return sum(p.sum() for m in models for p in m.parameters() if p.requires_grad) * 0.0


def check_same(obj: Any, what: str) -> None:
    """Raise if ``obj`` (e.g. selected prompt ids) differs between ranks: a desynchronised sampler."""
    if not is_distributed():
        return
    objs = all_gather_object(obj)
    if any(o != objs[0] for o in objs[1:]):
        raise RuntimeError(f"{what} differs between ranks ({objs}); the ranks' samplers are out of sync")


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``pfkit.rl.advantages.whiten`` with mean and (Bessel-corrected) variance over the masked positions of
    *all* ranks' buffers, so DDP normalises advantages like one process holding the whole batch."""
    if not is_distributed():
        from pfkit.rl.advantages import whiten as local_whiten

        return local_whiten(x, mask, eps=eps)
    m = mask.to(x.dtype)
    n = all_reduce(m.sum().detach().double().cpu())
    mean = (all_reduce((x * m).sum().detach().double().cpu()) / n.clamp_min(1.0)).to(x.device, x.dtype)
    ss = all_reduce((((x - mean) ** 2) * m).sum().detach().double().cpu())
    var = (ss / (n - 1).clamp_min(1.0)).to(x.device, x.dtype)
    return (x - mean) * torch.rsqrt(var + eps) * m


# ------------------------------------------------------------------------------------------- FSDP (2)
# Full sharding with torch's FSDP2 (``fully_shard``), driven by Lightning's ``ModelParallelStrategy``
# (configs/gpu/*_fsdp.yaml). Modules shard their trainable models in ``configure_model`` with
# :func:`fully_shard_models`. Forwards of a sharded model all-gather its weights (a collective), so
# sampling, which runs a different number of forwards on each rank (generation stops when the rank's
# sequences end), runs inside :func:`gathered_params`: one all-gather up front, then local forwards only.
# Everything here is a no-op for modules that are not sharded (single process, DDP).


def is_sharded(module: torch.nn.Module) -> bool:
    """True when ``module`` or one of its submodules is sharded with FSDP2 ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def fully_shard_models(*models: torch.nn.Module, mesh) -> None:
    """FSDP2 full sharding of Hugging Face models over ``mesh`` (a 1-D data-parallel device mesh).

    Each transformer block (the classes a ``PreTrainedModel`` lists in ``_no_split_modules``, e.g.
    ``GPT2Block``) becomes its own unit, then the model itself (embeddings, final norm, heads), so a
    forward holds one block's full weights at a time and parameters, gradients and optimizer state are
    split over the ranks. Idempotent (Lightning may call ``configure_model`` again).
    """
    from torch.distributed.fsdp import FSDPModule, fully_shard

    names = getattr(mesh, "mesh_dim_names", None)
    if names and "tensor_parallel" in names and mesh["tensor_parallel"].size() > 1:
        raise ValueError("pfkit modules shard data-parallel only (FSDP); give ModelParallelStrategy "
                         "tensor_parallel_size: 1 and data_parallel_size: <number of devices>")
    dp = mesh["data_parallel"] if names and "data_parallel" in names else mesh
    for model in models:
        if isinstance(model, FSDPModule):
            continue
        blocks = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        for m in model.modules():
            if type(m).__name__ in blocks and m is not model:
                fully_shard(m, mesh=dp)
        fully_shard(model, mesh=dp)


@contextmanager
def gathered_params(*modules: torch.nn.Module) -> Iterator[None]:
    """Full (unsharded) weights of FSDP2-sharded ``modules`` for the duration of the block.

    Inside, forwards run on the local full copy with no collective, so ranks may run different numbers
    of them (sampling), and ``state_dict()``/``save_pretrained`` see full tensors. Entering is a
    collective (one all-gather per unit): every rank must enter, the same number of times. On exit the
    weights are sharded again and each unit's reshard-after-forward setting is restored (read from FSDP2's
    private state, since a root unit keeps its weights after forward by default and there is no getter).
    A no-op for modules that are not sharded.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for mod in modules for m in mod.modules() if isinstance(m, FSDPModule)]
    saved = []
    for u in units:
        st = u._get_fsdp_state()  # remember the setting (roots are specially "keep after forward")
        saved.append((st._auto_reshard_after_forward, [g.post_forward_mesh_info for g in st._fsdp_param_groups]))
        u.set_reshard_after_forward(False, recurse=False)
    for u in units:
        u.unshard()
    try:
        yield
    finally:
        for u, (auto, infos) in zip(units, saved):
            u.reshard()
            st = u._get_fsdp_state()
            st._auto_reshard_after_forward = auto
            for g, info in zip(st._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info


def full_value(x: Any) -> Any:
    """A DTensor (an FSDP2 gradient norm, a sharded parameter) as a plain full tensor; anything else as is."""
    from torch.distributed.tensor import DTensor

    return x.full_tensor() if isinstance(x, DTensor) else x


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``module.state_dict()`` with full tensors. For an FSDP2-sharded module this is a collective (every
    rank must call it) and the tensors are assembled on CPU on rank 0 only (other ranks get ``{}``):
    the sharded state dict is all FSDP2's ``state_dict()`` returns, even inside :func:`gathered_params`."""
    if not is_sharded(module):
        return module.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
