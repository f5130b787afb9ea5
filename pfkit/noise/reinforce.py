"""REINFORCE losses for the noise-mask policy: the official code's form and the textbook form.

Both return one scalar to ``backward()`` once; it trains the classifier and the policy together
(the official code steps both optimisers after a single backward).

``faithful`` — exactly the official ``train_one_epoch.py``::

    L_i  = logsumexp_j log p(m_ij)                 (NOT Σ_j: it is not the joint log-likelihood)
    CE   = mean_i CE_i                             (one reward for the whole batch)
    loss = mean_i(L_i) · CE                        (CE not detached)

  The classifier's gradient is mean(L)·∇CE (its learning rate is scaled by mean(L) ≈ log g² at init),
  and the policy's is CE·∇mean(L): REINFORCE with reward −CE, no baseline, one reward per batch; the
  logsumexp weights the per-patch scores by softmax_j p(m_ij), which is not zero-mean.

``faithful`` with ``lr_match=True`` — the learning-rate-matched control::

    loss = CE + sg(CE) · (L̄ − sg(L̄))              (L̄ = mean_i L_i, sg = stop-gradient; value = CE)

  The classifier's gradient is exactly ∇CE, as for the plain baseline at the same lr (this is what
  dividing the faithful loss by a detached L̄ does to the classifier), while the policy's gradient stays
  the faithful one, CE·∇L̄ (dividing would also shrink it by 1/L̄). So this arm differs from ``faithful``
  only in the classifier's learning-rate factor L̄ ≈ log g² + …, which is the confound it removes.

``per_sample`` — the textbook estimator::

    R_i  = −CE_i (detached),  b = moving average of mean R,  A_i = R_i − b
    loss = mean_i CE_i − mean_i A_i · Σ_j log p(m_ij) − c_H · mean_i Σ_j H(Beta_ij)

  Per-image credit, the joint log-probability of the independent-patch mask, a variance-reducing
  baseline and an optional entropy bonus; the classifier sees plain mean CE.
"""

from __future__ import annotations

import torch

MODES = ("faithful", "per_sample")


def faithful_loss(logp: torch.Tensor, ce: torch.Tensor, *, lr_match: bool = False) -> torch.Tensor:
    """mean_i logsumexp_j logp_ij × CE. ``logp`` [B, ...patches], ``ce`` per-sample [B] or a scalar.

    ``lr_match``: CE + sg(CE)·(L̄ − sg(L̄)) — same policy gradient, classifier gradient ∇CE (module doc)."""
    ce = ce.mean() if ce.dim() > 0 else ce
    lse = torch.logsumexp(logp.flatten(1), dim=1).mean()
    if lr_match:
        return ce + ce.detach() * (lse - lse.detach())
    return lse * ce


def per_sample_loss(logp: torch.Tensor, ce: torch.Tensor, baseline: float | torch.Tensor = 0.0, *,
                    entropy: torch.Tensor | None = None, entropy_coef: float = 0.0
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Classifier CE + REINFORCE with per-image reward −CE_i and a baseline. ``ce`` is [B] (reduction='none')."""
    if ce.dim() != 1 or ce.shape[0] != logp.shape[0]:
        raise ValueError(f"per_sample needs per-image CE of shape [{logp.shape[0]}], got {tuple(ce.shape)}")
    reward = -ce.detach()
    advantage = reward - baseline
    logp_mask = logp.flatten(1).sum(1)
    policy = -(advantage * logp_mask).mean()
    stats = {"reward": reward.mean(), "advantage_std": advantage.std(unbiased=False),
             "logp_mask": logp_mask.detach().mean()}
    if entropy is not None and entropy_coef:
        ent = entropy.flatten(1).sum(1).mean()
        policy = policy - entropy_coef * ent
        stats["entropy"] = ent.detach()
    return ce.mean() + policy, stats


class RewardBaseline:
    """Exponential moving average of the batch-mean reward (starts at the first batch's mean)."""

    def __init__(self, momentum: float = 0.9):
        self.momentum, self.value = momentum, None

    def get(self, rewards: torch.Tensor) -> torch.Tensor:
        """The baseline to use for this batch: the average of *previous* batches (first batch: its own mean)."""
        return rewards.detach().mean() if self.value is None else torch.as_tensor(self.value).to(rewards)

    def update(self, rewards: torch.Tensor) -> float:
        r = float(rewards.detach().mean())
        self.value = r if self.value is None else self.momentum * self.value + (1 - self.momentum) * r
        return self.value

    def state_dict(self) -> dict:
        return {"momentum": self.momentum, "value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.momentum, self.value = state["momentum"], state["value"]


def reinforce_loss(mode: str, logp: torch.Tensor, ce: torch.Tensor, *, baseline: RewardBaseline | None = None,
                   entropy: torch.Tensor | None = None, entropy_coef: float = 0.0, lr_match: bool = False
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One loss for classifier + policy. ``ce`` per-sample [B]. Updates ``baseline`` in per_sample mode.

    ``lr_match`` applies to ``faithful`` only (per_sample's classifier already sees plain CE)."""
    if mode == "faithful":
        lse = torch.logsumexp(logp.flatten(1), dim=1).mean()
        return faithful_loss(logp, ce, lr_match=lr_match), {"reward": -ce.detach().mean(),
                                                            "logsumexp_logp": lse.detach()}
    if mode == "per_sample":
        b = baseline.get(-ce) if baseline is not None else 0.0
        loss, stats = per_sample_loss(logp, ce, b, entropy=entropy, entropy_coef=entropy_coef)
        if baseline is not None:
            baseline.update(-ce)
        stats["baseline"] = torch.as_tensor(float(b))
        return loss, stats
    raise ValueError(f"unknown REINFORCE mode {mode!r}; choose one of {MODES}")
