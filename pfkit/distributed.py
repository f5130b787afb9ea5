"""Small ``torch.distributed`` helpers that are no-ops in a single process.

Distributed RL needs three things a single-process run never shows (issue #10):

* every rank rolls out *different* prompts: :func:`shard` (``ids[rank::world]``) and
  :func:`sharded_rollout`, which runs a rollout function on this rank's share and gathers the rewards
  of all shares back into the original order, so per-prompt state (VADE's Beta tracker) is updated with
  the *same* evidence on every rank and stays identical without ever being broadcast;
* metrics over the whole batch, not one rank's share: :func:`all_gather_object`, :func:`gather_cat`,
  :func:`all_reduce`;
* agreement on control flow (how many backward passes a step makes), or DDP's gradient all-reduce
  deadlocks: :func:`all_reduce` with ``op="max"``.

All functions work when ``torch.distributed`` is not initialised (or world size is 1) and then do the
single-process thing, so modules call them unconditionally. Objects go through ``all_gather_object``
(pickled, CPU) because the payloads are small (rewards, counts, RNG states) and this works for gloo and
NCCL alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
