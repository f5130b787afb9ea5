"""Sampling a Beta noise mask and applying it to images (official ``train_one_epoch.py``).

    m ~ Beta(exp log α, exp log β)        per patch, [B, g, g]; ``sample()`` (no reparameterisation):
                                          the policy learns only through log_prob (REINFORCE)
    M = blur(upsample_nearest(m → H×W))   [B, 1, H, W], Gaussian blur (official k=13, σ=6 at 224 px)
    x̃ = x · M                             multiplicative; on normalised images this pulls pixels to the
                                          dataset mean, a smooth, spatially varying contrast attenuation

The blur is MONAI's separable Gaussian (``gaussian_1d`` + ``separable_filtering``) with a *sampled*,
normalised kernel and reflect padding, i.e. the same kernel and border as torchvision's
``gaussian_blur(kernel_size, sigma)`` that the official code calls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Beta

EPS = 1e-6


def beta_distribution(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> Beta:
    """Beta(exp log α, exp log β), element-wise."""
    return Beta(log_alpha.exp(), log_beta.exp())


def sample_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor, *, seed: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, Beta]:
    """Draw a mask and its per-patch log-density. Returns (mask [no grad], logp [grad to α, β], dist).

    Samples are clamped to [1e-6, 1 − 1e-6] before ``log_prob`` so a float32 draw of exactly 0 or 1
    (possible when a concentration is small) cannot give an infinite log-density. ``seed`` makes the
    draw reproducible without touching the global RNG (Beta sampling has no generator argument).
    """
    dist = beta_distribution(log_alpha, log_beta)
    with torch.no_grad():
        if seed is None:
            m = dist.sample()
        else:
            devices = [log_alpha.device] if log_alpha.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                m = dist.sample()
        m = m.clamp(EPS, 1 - EPS)
    return m, dist.log_prob(m), dist


def blur_kernel(sigma: float, kernel_size: int) -> torch.Tensor:
    """The normalised, sampled 1-D Gaussian of ``kernel_size`` taps (odd) — torchvision's kernel."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    from monai.networks.layers import gaussian_1d  # lazy: monai takes seconds to import (see pfkit.noise)

    radius = kernel_size // 2
    return gaussian_1d(torch.tensor(float(sigma)), truncated=radius / sigma + 1e-6, approx="sampled",
                       normalize=True)[: 2 * radius + 1]


def upsample_blur(mask: torch.Tensor, size: tuple[int, int], *, sigma: float = 1.0, kernel_size: int = 5
                  ) -> torch.Tensor:
    """[B, g, g] patch mask -> [B, 1, H, W] smooth pixel mask (nearest upsampling, then Gaussian blur)."""
    m = mask.unsqueeze(1).float()
    if tuple(m.shape[-2:]) != tuple(size):
        m = F.interpolate(m, size=tuple(size), mode="nearest")
    if kernel_size > 1:
        from monai.networks.layers import separable_filtering

        m = separable_filtering(m, blur_kernel(sigma, kernel_size).to(m), mode="reflect")
    return m


def apply_mask(images: torch.Tensor, mask: torch.Tensor, *, sigma: float = 1.0, kernel_size: int = 5
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiply images [B, C, H, W] by the upsampled, blurred mask (broadcast over channels).

    ``mask`` is [B, g, g] or [1, g, g] (one mask for the whole batch, as in the official validation).
    Returns (masked images, pixel mask [B|1, 1, H, W]).
    """
    pix = upsample_blur(mask, images.shape[-2:], sigma=sigma, kernel_size=kernel_size)
    return images * pix, pix
