"""PPO-family losses over response tokens: clipped policy loss (PPO / DAPO clip-higher / GSPO sequence
ratio), clipped value loss, KL estimators k1/k2/k3 and entropy.

Conventions: tensors are ``[B, T]`` over response tokens, ``mask`` is 1 on real tokens; losses are
*minimised*; ``stats`` are detached scalars for logging.

Aggregation (``agg``):
- ``"token-mean"``: sum over all tokens of the batch / number of tokens (DAPO's token-level loss: long
  responses weigh more).
- ``"seq-mean"``: mean over tokens within each response, then mean over responses (the original
  PPO/GRPO "seq-mean-token-mean": every response weighs the same).
"""

from __future__ import annotations

import torch

from pfkit.rl.advantages import masked_mean

__all__ = ["aggregate", "policy_loss", "value_loss", "kl"]

AGGS = ("token-mean", "seq-mean")


def aggregate(loss: torch.Tensor, mask: torch.Tensor, agg: str = "token-mean") -> torch.Tensor:
    """Reduce a per-token ``[B, T]`` loss to a scalar (see module doc for the two modes)."""
    m = mask.to(loss.dtype)
    if agg == "token-mean":
        return (loss * m).sum() / m.sum().clamp_min(1.0)
    if agg == "seq-mean":
        per_seq = (loss * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        has_tokens = (m.sum(-1) > 0).to(loss.dtype)
        return (per_seq * has_tokens).sum() / has_tokens.sum().clamp_min(1.0)
    raise ValueError(f"agg must be one of {AGGS}, got {agg!r}")


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float = 0.2, clip_high: float = 0.2, ratio_level: str = "token",
                agg: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped surrogate ``-min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)``.

    - ``clip_low == clip_high`` is PPO (Schulman et al. 2017); ``clip_high > clip_low`` is DAPO's
      clip-higher (e.g. 0.2 / 0.28), which leaves more room for raising unlikely tokens.
    - ``ratio_level="token"``: rho_t = pi(y_t) / pi_old(y_t) per token.
    - ``ratio_level="sequence"``: GSPO's length-normalised sequence ratio
      ``s_i = exp(mean_t [log pi(y_t) - log pi_old(y_t)])`` over the response's tokens, shared by every
      token of the response (gradients flow through the mean). With a per-sequence advantage (constant over
      tokens) and ``agg="seq-mean"`` this is exactly GSPO's objective; GSPO uses much smaller clip
      ranges (about 3e-4 / 4e-4) because s_i is a geometric mean.

    ``advantages`` may be ``[B, T]`` or ``[B]`` (one per response, broadcast over tokens).
    Stats: ``clip_frac`` (share of tokens where the clipped branch is active, i.e. gets no gradient),
    ``ratio_mean``, ``ratio_max``, ``approx_kl`` (k3 estimate of KL(pi_old || pi)), ``loss``.
    """
    if ratio_level not in ("token", "sequence"):
        raise ValueError(f"ratio_level must be 'token' or 'sequence', got {ratio_level!r}")
    if advantages.dim() == 1:
        advantages = advantages[:, None].expand_as(logp)
    m = mask.to(logp.dtype)
    log_ratio = (logp - old_logp) * m
    if ratio_level == "token":
        ratio = torch.exp(log_ratio)
    else:
        seq_log_ratio = log_ratio.sum(-1) / m.sum(-1).clamp_min(1.0)
        ratio = torch.exp(seq_log_ratio)[:, None].expand_as(logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)
    loss = aggregate(per_token, mask, agg)
    with torch.no_grad():
        is_clipped = (clipped > unclipped).to(logp.dtype)
        stats = {
            "loss": loss.detach(),
            "clip_frac": masked_mean(is_clipped, m),
            "ratio_mean": masked_mean(ratio, m),
            "ratio_max": (ratio * m + (1 - m) * -torch.inf).max() if m.sum() > 0 else torch.ones(()),
            "approx_kl": masked_mean(torch.exp(-log_ratio) - 1 + log_ratio, m),
        }
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float | None = 0.2, agg: str = "token-mean") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``.

    ``clip=None`` gives the plain squared error ``0.5 * (V - R)^2``. Stat ``vf_clip_frac``: share of tokens
    where the clipped term is the larger one.
    """
    err = (values - returns) ** 2
    if clip is None:
        per_token = 0.5 * err
        frac = torch.zeros((), dtype=values.dtype)
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        err_clipped = (v_clipped - returns) ** 2
        per_token = 0.5 * torch.maximum(err, err_clipped)
        frac = masked_mean((err_clipped > err).to(values.dtype).detach(), mask)
    loss = aggregate(per_token, mask, agg)
    return loss, {"loss": loss.detach(), "vf_clip_frac": frac}


def kl(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL", 2020).

    With ``log_r = ref_logp - logp`` (log of pi_ref / pi at the sampled token):
    - ``k1 = -log_r`` (unbiased, can be negative; PPO-RLHF puts ``-beta * k1`` in the per-token reward),
    - ``k2 = 0.5 * log_r ** 2`` (biased, low variance, always >= 0),
    - ``k3 = exp(log_r) - 1 - log_r`` (unbiased and >= 0; GRPO's KL loss).
    """
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"estimator must be 'k1', 'k2' or 'k3', got {estimator!r}")
