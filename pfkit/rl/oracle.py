"""A controlled-noise reward oracle: the mechanism experiment for PF-PPO.

PF-PPO's premise (arXiv 2409.06957, §3) is that a learned reward model is *more reliable in some reward
regions than in others*, so training only on responses from the reliable regions helps. A learned RM
mixes that with everything else an RM gets wrong; this oracle isolates it. Each response's reward is

    c = (s + u) / 2,         u ~ U(0, 1)                 the clean reward: every pass outranks every
                                                           fail, u breaks ties within a class as an RM's
                                                           own preferences would (s = unit-test score)
    r = c + σ(c)·ε,          ε ~ N(0, 1)                 the observed reward
    σ(c) = σ̄ · w(c)          with E_{c~U(0,1)} w(c) = 1  so every profile has the same mean noise σ̄

Profiles ``w``:
- ``uniform``       w = 1: equally noisy everywhere (the paper predicts no gain from filtering here).
- ``noisy_middle``  w = 6c(1−c): exact at the extremes (clear passes and clear failures), noisiest at
                    the pass/fail boundary: the paper's hypothesis, under which BR/BW should beat PPO-M.
- ``noisy_top``     w = 2c: the highest rewards are the least reliable (BoN should suffer most).
- ``exact``         σ = 0: r = c. Still not noise-free for the policy: u is a random tie-breaker, and with
                    a pass rate p its share of the reward's variance is (1/48) / (1/48 + p(1−p)/4), 57% at
                    p = 0.07 (the embedded policy on the RL prompts); in an all-fail group the whole
                    advantage is u.
- ``score``         r = s, the unit-test score itself: the noise-free bound (no tie-breaker).
- ``pure_noise``    r = σ̄·ε, independent of the tests: the lower bound.

For binary scores c lies in [0, ½) for failures and [½, 1) for passes, so "region" means where the
clean reward sits; fractional scores (partial credit) work the same way.
"""

from __future__ import annotations

import torch

PROFILES = ("uniform", "noisy_middle", "noisy_top", "exact", "score", "pure_noise")


def noise_scale(clean: torch.Tensor, profile: str, sigma: float) -> torch.Tensor:
    """σ(c) for clean rewards ``c`` in [0, 1]; its mean over c ~ U(0, 1) is ``sigma`` for every profile."""
    c = clean.clamp(0.0, 1.0)
    if profile == "uniform" or profile == "pure_noise":
        w = torch.ones_like(c)
    elif profile == "noisy_middle":
        w = 6.0 * c * (1.0 - c)
    elif profile == "noisy_top":
        w = 2.0 * c
    elif profile in ("exact", "score"):
        w = torch.zeros_like(c)
    else:
        raise ValueError(f"unknown oracle profile {profile!r}; choose from {', '.join(PROFILES)}")
    return sigma * w


def oracle_rewards(scores: torch.Tensor, profile: str = "noisy_middle", sigma: float = 0.3,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed rewards and their clean values for unit-test ``scores`` in [0, 1] (any shape).

    Returns ``(reward, clean)``. Deterministic given ``generator``.
    """
    scores = torch.as_tensor(scores, dtype=torch.float32)
    if scores.numel() and (scores.min() < 0 or scores.max() > 1):
        raise ValueError("oracle scores must lie in [0, 1] (the fraction of unit tests passed)")
    if sigma < 0:
        raise ValueError(f"oracle sigma must be >= 0, got {sigma}")
    u = torch.rand(scores.shape, generator=generator)
    eps = torch.randn(scores.shape, generator=generator)
    if profile == "score":
        return scores.clone(), scores.clone()
    clean = (scores + u) / 2
    if profile == "pure_noise":
        return sigma * eps, clean
    return clean + noise_scale(clean, profile, sigma) * eps, clean
