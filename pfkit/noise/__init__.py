"""Noise-mask policy, mask sampling/application and REINFORCE losses (pure torch + MONAI, no Lightning).

Yavuz & Yang, "Policy Gradient-Driven Noise Mask" (arXiv 2406.14568), per the official code:

    log α, log β = policy(x)                       # pfkit.noise.policy.MaskPolicy, [B, g, g]
    m, logp, _   = sample_mask(log α, log β)       # pfkit.noise.mask
    x̃, _         = apply_mask(x, m)                # nearest upsample + Gaussian blur, multiply
    ce_i         = CE(classifier(x̃)_i, y_i)
    loss, stats  = reinforce_loss(mode, logp, ce)  # pfkit.noise.reinforce: "faithful" | "per_sample"
    loss.backward(); opt_classifier.step(); opt_policy.step()

MONAI is imported inside the functions that build its networks and filters, not at module import: the
CLI imports every LightningModule to resolve class names, and monai's ~5 s import would otherwise be paid
by every `pfkit fit` run, noise-mask or not.
"""

from pfkit.noise.mask import apply_mask, beta_distribution, sample_mask, upsample_blur
from pfkit.noise.nets import Classifier
from pfkit.noise.policy import MaskPolicy
from pfkit.noise.reinforce import MODES, RewardBaseline, faithful_loss, per_sample_loss, reinforce_loss

__all__ = ["MODES", "Classifier", "MaskPolicy", "RewardBaseline", "apply_mask", "beta_distribution",
           "faithful_loss", "per_sample_loss", "reinforce_loss", "sample_mask", "upsample_blur"]
