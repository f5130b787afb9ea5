"""Advantage estimators: GAE (PPO / PF-PPO), group-relative (GRPO), and masked whitening.

All tensors are ``[B, T]`` over *response* tokens with a 0/1 ``mask`` that is 1 up to and including the
last kept token (right padding). Positions where ``mask`` is 0 get advantage 0 and return 0, so callers
can sum or average with the same mask without worrying about what sits in the padding.
"""

from __future__ import annotations

import torch

__all__ = ["gae", "group_relative", "whiten", "masked_mean", "masked_var"]


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None, dim=None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is 1 (all positions if ``mask`` is None)."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim)
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, like ``torch.var``)."""
    if mask is None:
        return x.var(unbiased=unbiased) if x.numel() > 1 else torch.zeros((), dtype=x.dtype)
    mask = mask.to(x.dtype)
    n = mask.sum()
    mean = masked_mean(x, mask)
    ss = (((x - mean) ** 2) * mask).sum()
    if unbiased:
        return ss / (n - 1).clamp_min(1.0)
    return ss / n.clamp_min(1.0)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True,
           eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions; masked-out positions are returned as 0.

    This is PPO's "advantage normalisation" (Shen et al. 2024 trick used by PF-PPO): computed over the
    whole training buffer, i.e. over the *kept* samples only when called after filtration.
    ``shift_mean=False`` only rescales (keeps the sign of each advantage).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps) if shift_mean else x * torch.rsqrt(var + eps)
    if mask is not None:
        out = out * mask.to(out.dtype)
    return out


@torch.no_grad()
def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` = 0 after the last unmasked token (the episode
    ends there), ``A_t = delta_t + gamma * lam * A_{t+1}``; ``returns = A + V`` are the critic's targets.
    Returns ``(advantages, returns)``, both ``[B, T]`` and zero where ``mask`` is 0. No gradient flows.
    """
    if rewards.shape != values.shape or rewards.shape != mask.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
                         f"{tuple(mask.shape)} must all be [B, T]")
    m = mask.to(values.dtype)
    rewards = rewards.to(values.dtype) * m
    values = values * m
    B, T = rewards.shape
    adv = torch.zeros_like(values)
    last = torch.zeros(B, dtype=values.dtype, device=values.device)
    for t in reversed(range(T)):
        if t + 1 < T:
            next_value = values[:, t + 1] * m[:, t + 1]
            next_adv = last * m[:, t + 1]
        else:
            next_value = torch.zeros_like(last)
            next_adv = torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * next_adv) * m[:, t]
        adv[:, t] = last
    returns = (adv + values) * m
    return adv, returns


def group_relative(rewards: torch.Tensor, group_size: int, scale: str = "std", eps: float = 1e-6,
                   unbiased: bool = True) -> torch.Tensor:
    """GRPO's outcome advantage: each reward minus its group's mean, divided by the group's std.

    ``rewards`` is ``[B*G]`` ordered group by group (G = ``group_size`` consecutive responses to one
    prompt). ``scale="none"`` skips the division (Dr. GRPO, which removes the std's difficulty bias).
    The std is Bessel-corrected by default as in DeepSeekMath/TRL (``unbiased=False`` for the population
    std); a group of 1 has advantage 0. A group with identical rewards gets all-zero advantages.
    """
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [B*G], got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    if scale not in ("std", "none"):
        raise ValueError(f"scale must be 'std' or 'none', got {scale!r}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "std":
        std = r.std(dim=1, keepdim=True, correction=1 if (unbiased and group_size > 1) else 0)
        centred = centred / (std + eps)
    return centred.reshape(-1).to(rewards.dtype if rewards.is_floating_point() else torch.float32)
