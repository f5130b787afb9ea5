"""One GRPO step (Shao et al. 2024), with DAPO's clip-higher and dynamic sampling, Dr. GRPO and GSPO options.

Pure torch over typed data; the Lightning module (``pfkit.modules.grpo``) only wires the optimizer, the
strategy hooks, logging and checkpoints around :func:`step`.

    for each step:
        1. collect: a prompt sampler picks k prompts and has each rolled out G times      (sampler.collect)
           and scored by the verifier; a filter sampler drops zero-variance groups and refills
        2. A = group_relative(rewards, G)                     mean-centred per group, optional std scale
        3. for epoch in ppo_epochs, for minibatch:
               logp = log pi(response | prompt)                (shared prompt prefix: one pass per prompt)
               loss = clipped surrogate(logp, old_logp, A)     (+ kl_coef * KL(pi || ref) when kl_coef > 0)
               loss.backward(); clip_grad_norm; optimizer.step()

Samples whose advantage is exactly 0 contribute nothing to the clipped term, so when ``kl_coef == 0`` they
are left out of the forward/backward pass and the loss is rescaled to the normaliser the full batch would
have had (token count for token-mean, sequence count for seq-mean): identical gradient, less compute.

DDP: the sampler's rollouts are split over ranks (``pfkit.distributed.sharded_rollout``); each rank trains
on its own groups with the loss normaliser of the whole batch divided by the world size (DDP averages
gradients), so one step equals the single-process step on the same rollouts, and ranks agree on the number
of backward passes (a rank with nothing left runs :func:`pfkit.distributed.zero_loss`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from pfkit import distributed as dist
from pfkit.rl.advantages import group_relative
from pfkit.rl.losses import aggregate, kl, policy_loss
from pfkit.rollout import Rollout


@dataclass
class GRPOConfig:
    """The hyper-parameters of one step (names as in ``GRPOModule``)."""

    prompts_per_step: int = 16
    group_size: int = 8
    clip_low: float = 0.2
    clip_high: float = 0.28
    ratio_level: str = "token"
    agg: str = "token-mean"
    adv_scale: str = "std"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    ppo_epochs: int = 1
    minibatch_size: int | None = None
    max_grad_norm: float | None = 1.0
    shared_prefix: bool = True
    #: truncated importance-sampling cap C for rollouts from another engine (vLLM): each token's loss is
    #: weighted by min(pi_train / pi_engine, C) (:func:`truncated_is_weights`); None = off (the HF engine,
    #: whose log-probs equal the trainer's)
    is_cap: float | None = None

    @classmethod
    def from_dict(cls, d) -> GRPOConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class StepResult:
    """What one step did: logged numbers, the collected batch (rollout tables) and per-sample advantages."""

    stats: dict[str, float]
    batch: Any                      # pfkit.data.samplers.GroupBatch: payload[j] = group j's Rollout (or None)
    advantages: torch.Tensor        # [len(batch.prompt_ids) * G]
    #: with kl_coef > 0: the reference's per-token log-probs the KL term used, one ``[G, T_j]`` tensor per group
    #: (T_j = that group's ``response_len``; None where another rank rolled it out); None without a KL term
    ref_logprobs: list[torch.Tensor | None] | None = None


def truncated_is_weights(train_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor,
                         cap: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token truncated importance weights ``min(exp(train_logp - engine_logp), cap)`` (0 where masked).

    The rollout engine (vLLM) samples from pi_engine, which differs slightly from the trainer's pi_train for
    the same weights (other kernels, precision); the policy gradient wants samples from pi_train. TRL
    (``vllm_importance_sampling_mode="token_truncate"``, cap 3) and verl (``rollout_is: token``, truncate,
    threshold 2) multiply each token's loss by this ratio, truncated at C to bound the variance (Yao et al.
    2025, "Your efficient RL framework secretly brings you off-policy RL training"). No gradient flows
    through it. Stats: the untruncated ratio's mean/max over real tokens, the share of tokens capped and the
    mean absolute log-prob gap between the engines.
    """
    if cap <= 0:
        raise ValueError(f"is_cap must be > 0 (or None for no correction), got {cap}")
    m = mask.to(train_logp.dtype)
    diff = (train_logp.detach() - engine_logp.to(train_logp.dtype)) * m
    ratio = torch.exp(diff)
    n = m.sum().clamp_min(1.0)
    stats = {"is_ratio_mean": float((ratio * m).sum() / n),
             "is_ratio_max": float((ratio * m).max()) if m.sum() > 0 else 1.0,
             "is_frac_capped": float(((ratio > cap).to(m.dtype) * m).sum() / n),
             "engine_logp_gap": float(diff.abs().sum() / n)}
    return ratio.clamp(max=cap) * m, stats


def _placeholder(pad_id: int) -> Rollout:
    """One row with a one-token prompt and an empty response: what a rank without samples runs forwards on."""
    z = torch.zeros(1, 1)
    return Rollout(sequences=torch.tensor([[0, pad_id]]), attention_mask=torch.tensor([[1, 0]]), prompt_len=1,
                   response_ids=torch.tensor([[pad_id]]), response_mask=torch.zeros(1, 1, dtype=torch.long),
                   logprobs=z, texts=[""], prompt_index=torch.zeros(1, dtype=torch.long), pad_id=pad_id)


def step(policy, optimizer, sampler, rollout_fn: Callable, cfg: GRPOConfig, *, ref_policy=None,
         generator: torch.Generator | None = None, backward: Callable | None = None,
         device=None) -> StepResult:
    """1. collect rollouts through the sampler, 2.-3. :func:`update` on them."""
    t0, c0 = time.perf_counter(), time.process_time()
    collect_fn = rollout_fn
    if dist.is_distributed():
        def collect_fn(ids):
            return dist.sharded_rollout(ids, rollout_fn, cfg.group_size)
    with dist.gathered_params(policy):  # FSDP: full weights for sampling (collective: all ranks)
        batch = sampler.collect(cfg.prompts_per_step, collect_fn)
    stats, adv, ref = update(policy, optimizer, batch, cfg, ref_policy=ref_policy, generator=generator,
                             backward=backward, device=device)
    stats = {"rollouts_spent": float(sampler.rollouts_spent), **stats,
             "step_time": time.perf_counter() - t0,
             "step_cpu_time": time.process_time() - c0}  # this process's CPU seconds (all threads)
    return StepResult(stats, batch, adv, ref)


def update(policy, optimizer, batch, cfg: GRPOConfig, *, ref_policy=None, generator=None,
           backward: Callable | None = None, device=None
           ) -> tuple[dict[str, float], torch.Tensor, list[torch.Tensor | None] | None]:
    """2.-3.: advantages and ``ppo_epochs`` passes of the clipped surrogate over one collected batch.

    ``batch.payload[j]`` is group j's :class:`Rollout` (G rows), or None where another rank rolled it out.
    ``backward(loss)`` defaults to ``loss.backward()`` (Lightning passes ``manual_backward``).
    Returns (stats, per-sample advantages, the reference's per-token log-probs per group as in
    :attr:`StepResult.ref_logprobs`: computed once for the KL term, and logged from there).
    """
    backward = backward or torch.Tensor.backward
    device = device or next(policy.parameters()).device
    G = cfg.group_size
    gen_r = batch.generated_rewards
    stats = {
        "rollouts_step": float(batch.rollouts),
        "reward_generated": float(gen_r.mean()) if gen_r.numel() else 0.0,
        "frac_zero_var": float(_zero_variance(gen_r).float().mean()) if gen_r.numel() else 0.0,
        "groups_kept": float(len(batch.prompt_ids)),
        "groups_dropped": float(batch.dropped),
    }
    groups = batch.payload
    if not groups:  # a filter sampler that found nothing useful this step (same on every rank)
        stats.update(reward_mean=0.0, effective_samples=0.0, loss=0.0)
        _noop(optimizer)
        return stats, torch.zeros(0), None

    # 2. group-relative advantages over the whole batch (row b answers group b // G)
    rewards = batch.rewards.reshape(-1)
    adv = group_relative(rewards, G, scale=cfg.adv_scale)
    effective = adv.abs() > 1e-8
    stats.update(reward_mean=float(rewards.mean()), effective_samples=float(effective.sum()))

    local = torch.tensor([g is not None for g in groups]).repeat_interleave(G)  # rolled out on this rank
    rows = torch.nonzero(local if cfg.kl_coef > 0 else local & effective).flatten()
    if dist.all_reduce(int(rows.numel())) == 0:
        stats["loss"] = 0.0
        _noop(optimizer)
        return stats, adv, None
    mine = [g for g in groups if g is not None]
    n_tokens = dist.all_reduce(float(sum(int(g.response_mask.sum()) for g in mine)))
    # normaliser of the whole step batch (all ranks); / world because DDP averages the ranks' gradients
    full_norm = (max(n_tokens, 1.0) if cfg.agg == "token-mean" else float(len(groups) * G)) / dist.world_size()
    stats["response_len"] = n_tokens / (len(groups) * G)
    # the rows to train on, as one rollout; a rank without any runs the same passes on a placeholder row
    local_pos = local.long().cumsum(0) - 1
    data = (type(mine[0]).cat(mine).select(local_pos[rows]) if rows.numel() else  # VLMRollout keeps images
            _placeholder(mine[0].pad_id if mine else 0)).to(device)
    A = adv[rows].to(device)
    rmask = data.response_mask

    def logprobs(model, idx, entropy=False):  # the rollout's own scoring (a VLMRollout passes each row's image)
        return data.logprobs_under(model, idx, shared_prefix=cfg.shared_prefix, return_entropy=entropy)

    ref_logp = None
    if cfg.kl_coef > 0 and rows.numel():
        with torch.no_grad():
            ref_logp = logprobs(ref_policy, torch.arange(rows.numel(), device=device))

    # 3. ppo_epochs passes over minibatches; every rank makes the same number of backward passes
    train_old = None  # with several epochs and another engine: pi_train of the sampled tokens, before updating
    if cfg.is_cap is not None and cfg.ppo_epochs > 1 and rows.numel():
        with torch.no_grad():
            train_old = logprobs(policy, torch.arange(rows.numel(), device=device))

    mb = cfg.minibatch_size or max(dist.all_reduce(int(rows.numel()), op="max"), 1)
    n_chunks = dist.all_reduce(-(-int(rows.numel()) // mb), op="max")
    logs: dict[str, list[float]] = {}
    row0 = torch.zeros(1, dtype=torch.long, device=device)
    policy.train()
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(rows.numel(), generator=generator) if cfg.ppo_epochs > 1 else torch.arange(rows.numel())
        for c in range(n_chunks):
            idx = perm[c * mb:(c + 1) * mb].to(device)
            if idx.numel() == 0:  # this rank ran out of samples: a zero-gradient pass keeps DDP in step
                loss = dist.zero_loss(policy, forward=lambda: logprobs(policy, row0))
                _optimize(optimizer, loss, backward, policy, cfg.max_grad_norm)
                continue
            m = rmask[idx]
            logp, ent = logprobs(policy, idx, entropy=True)
            old = logp.detach() if cfg.ppo_epochs == 1 else data.logprobs[idx]
            adv_i = A[idx]
            if cfg.is_cap is not None:
                # w * max(-A rho, -A clip(rho)) = max(-(wA) rho, -(wA) clip(rho)) for w >= 0: weighting
                # the advantage per token is weighting each token's clipped surrogate
                old = old if train_old is None else train_old[idx]
                w, is_st = truncated_is_weights(old, data.logprobs[idx], m, cfg.is_cap)
                adv_i = adv_i[:, None] * w
                for k, v in is_st.items():
                    logs.setdefault(k, []).append(v)
            loss, st = policy_loss(logp, old, adv_i, m, clip_low=cfg.clip_low, clip_high=cfg.clip_high,
                                   ratio_level=cfg.ratio_level, agg=cfg.agg)
            # renormalise: the chunk's share of the normaliser the whole step batch (zero-advantage
            # samples included) would have had; exact full-batch gradient when there is one chunk
            part_norm = m.sum().clamp_min(1.0) if cfg.agg == "token-mean" else float(idx.numel())
            scale = part_norm / (full_norm * idx.numel() / rows.numel())
            loss = loss * scale
            if cfg.kl_coef > 0:
                kl_term = aggregate(kl(logp, ref_logp[idx], cfg.kl_estimator), m, cfg.agg)
                loss = loss + cfg.kl_coef * kl_term * scale
                logs.setdefault("kl", []).append(float(kl_term.detach()))
            _optimize(optimizer, loss, backward, policy, cfg.max_grad_norm)
            logs.setdefault("loss", []).append(float(loss.detach()))
            logs.setdefault("clip_frac", []).append(float(st["clip_frac"]))
            logs.setdefault("entropy", []).append(float((ent.detach() * m).sum() / m.sum().clamp_min(1)))
    policy.eval()
    stats.update({k: sum(v) / len(v) for k, v in logs.items()})
    return stats, adv, _per_group(ref_logp, groups, G)


def _per_group(ref_logp, groups, G):
    """The KL term's reference log-probs (rows = this rank's groups in order, since with a KL term no row is
    left out) split back into one ``[G, T_j]`` tensor per group (None for another rank's groups)."""
    if ref_logp is None:
        return None
    out, k = [], 0
    for g in groups:
        if g is None:
            out.append(None)
            continue
        out.append(ref_logp[k * G:(k + 1) * G, :g.response_len].detach().float().cpu())
        k += 1
    return out


def _optimize(optimizer, loss, backward, model, max_grad_norm) -> None:
    optimizer.zero_grad(set_to_none=True)
    backward(loss)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()


def _noop(optimizer) -> None:
    """A step with nothing to learn from: no parameter moves (every grad is None, which torch optimizers
    skip, so no Adam momentum drift), but the optimizer step is still counted (Lightning's ``max_steps``)."""
    optimizer.zero_grad(set_to_none=True)
    optimizer.step()


def _zero_variance(rewards: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    r = torch.as_tensor(rewards, dtype=torch.float64)
    return (r.max(dim=1).values - r.min(dim=1).values) <= eps
