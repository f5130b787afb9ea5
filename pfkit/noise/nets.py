"""Small MONAI networks sized for 28–64 px images: classifiers and the mask policy's feature extractor.

The official code uses timm ``resnet10t`` (BasicBlock, layers (1,1,1,1)) for the policy and a timm ResNet
for the classifier. MONAI's ``ResNet`` with ``block="basic"`` and ``layers=(1,1,1,1)`` is the same
topology; widths are a parameter so a CPU can train it in minutes. Every classifier here is a
``backbone`` (image -> feature vector) plus a linear ``head``, so the few-shot evaluation can read
frozen features with :meth:`Classifier.features` whatever the architecture.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ARCHS = ("resnet", "densenet")


def resnet_backbone(in_channels: int, widths: Sequence[int] = (16, 32, 64, 128), stem_stride: int = 1
                    ) -> tuple[nn.Module, int]:
    """A MONAI 2-D ResNet-10-style trunk (one BasicBlock per stage), pooled; returns (module, out_dim).

    ``stem_stride=1`` and no max-pool keep enough resolution for 28 px inputs (the ImageNet stem,
    stride 2 + max-pool, would shrink 28 px to 7 px before the first block). ``stem_stride=2`` (no
    max-pool: 28 px -> 14 px) makes a step 2-3x cheaper on CPU (benchmarks/noisemask_step.py), which
    is what lets the seeded study fit.
    """
    from monai.networks.nets import ResNet  # lazy: see pfkit.noise

    net = ResNet("basic", [1, 1, 1, 1], list(widths), spatial_dims=2, n_input_channels=in_channels,
                 conv1_t_size=3, conv1_t_stride=stem_stride, no_max_pool=True, feed_forward=False)
    return net, int(widths[-1])


def densenet_backbone(in_channels: int, init_features: int = 16, growth_rate: int = 8,
                      block_config: Sequence[int] = (2, 4, 4)) -> tuple[nn.Module, int]:
    """A small MONAI 2-D DenseNet trunk (``DenseNet121`` is the same family at block_config (6,12,24,16))."""
    from monai.networks.nets import DenseNet  # lazy: see pfkit.noise

    net = DenseNet(spatial_dims=2, in_channels=in_channels, out_channels=1, init_features=init_features,
                   growth_rate=growth_rate, block_config=tuple(block_config))
    out_dim = net.class_layers.out.in_features
    trunk = nn.Sequential(net.features, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return trunk, int(out_dim)


class Classifier(nn.Module):
    """backbone (MONAI) -> features -> linear head."""

    def __init__(self, num_classes: int, in_channels: int = 1, arch: str = "resnet",
                 widths: Sequence[int] = (16, 32, 64, 128), stem_stride: int = 1):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown classifier arch {arch!r}; choose one of {ARCHS}")
        if arch == "resnet":
            self.backbone, dim = resnet_backbone(in_channels, widths, stem_stride)
        else:
            self.backbone, dim = densenet_backbone(in_channels)
        self.head = nn.Linear(dim, num_classes)
        self.num_classes, self.in_channels, self.arch = num_classes, in_channels, arch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
