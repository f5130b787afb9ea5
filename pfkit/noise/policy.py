"""The mask policy: image -> grid x grid Beta log-concentrations (official ``MaskGenerator``).

Official code (``_policy_gradient/create_model.py``): a randomly initialised resnet10t feature extractor,
then two independent MLP heads ``Linear-BN-ReLU-Linear-BN-ReLU-Linear(grid²)`` giving log α and log β
per patch. With ``use_base=True`` (the official behaviour) the head outputs are mixed with running
"base" parameters,

    log α = mix · base_α + (1 − mix) · head_α(fe(x))            (mix = 0.9)
    base_α ← m · base_α + (1 − m) · mean_batch(head_α(fe(x)))   (m = 0.99, detached, training only)

and the same for β. ``base_α, base_β`` start U(0, 1) and are buffers here (saved in checkpoints, moved
with the module: the official code keeps them on the CPU and carries them by hand). They are also the
*unconditional* mask distribution the official validation uses. Difference from the official code: the
heads run once per forward (the official one calls each head twice, so BatchNorm statistics update twice).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pfkit.noise.nets import resnet_backbone


def _head(dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Linear(hidden, out))


class MaskPolicy(nn.Module):
    """Maps images [B, C, H, W] to (log α, log β), each [B, grid, grid]."""

    def __init__(self, grid: int = 8, in_channels: int = 1, widths: Sequence[int] = (8, 16, 32, 64),
                 hidden: int = 128, use_base: bool = True, mix: float = 0.9, base_momentum: float = 0.99,
                 stem_stride: int = 1):
        super().__init__()
        if grid < 1:
            raise ValueError(f"grid must be >= 1, got {grid}")
        self.grid, self.use_base, self.mix, self.base_momentum = grid, use_base, mix, base_momentum
        self.fe, dim = resnet_backbone(in_channels, widths, stem_stride)
        self.alpha = _head(dim, hidden, grid * grid)
        self.beta = _head(dim, hidden, grid * grid)
        if use_base:
            self.register_buffer("base_alpha", torch.rand(1, grid * grid))
            self.register_buffer("base_beta", torch.rand(1, grid * grid))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.fe(x)
        a, b = self.alpha(f), self.beta(f)
        if self.use_base:
            # mix with the *current* base first, then move the base (official order)
            la = self.mix * self.base_alpha + (1 - self.mix) * a
            lb = self.mix * self.base_beta + (1 - self.mix) * b
            if self.training:
                with torch.no_grad():
                    m = self.base_momentum
                    self.base_alpha.mul_(m).add_((1 - m) * a.detach().mean(0, keepdim=True))
                    self.base_beta.mul_(m).add_((1 - m) * b.detach().mean(0, keepdim=True))
            a, b = la, lb
        g = self.grid
        return a.view(-1, g, g), b.view(-1, g, g)

    def unconditional(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The image-independent (log α, log β) [1, grid, grid]: the base parameters (official validation)."""
        if not self.use_base:
            raise ValueError("this policy has no base parameters (use_base=False); call it on images instead")
        g = self.grid
        return self.base_alpha.view(1, g, g), self.base_beta.view(1, g, g)
