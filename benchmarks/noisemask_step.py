"""Time one noise-mask pretraining step and one plain step (28 px, batch 64, CPU) with the classifier and
policy stems at stride 1 vs stride 2 (the study's configs use 2), side by side in one process.

    python benchmarks/noisemask_step.py [--threads 1] [--steps 10]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from pfkit.noise import Classifier, MaskPolicy, apply_mask, reinforce_loss, sample_mask


def pretrain_step(clf, pol, oc, op, x, y) -> None:
    la, lb = pol(x)
    m, logp, _ = sample_mask(la, lb)
    ce = F.cross_entropy(clf(apply_mask(x, m)[0]), y, reduction="none")
    loss, _ = reinforce_loss("faithful", logp, ce)
    oc.zero_grad()
    op.zero_grad()
    loss.backward()
    oc.step()
    op.step()


def plain_step(clf, pol, oc, op, x, y) -> None:
    loss = F.cross_entropy(clf(x), y)
    oc.zero_grad()
    loss.backward()
    oc.step()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 6, (64,))
    print(f"threads {args.threads}, batch 64, 28 px, widths (8, 16, 32, 64), grid 8; mean of {args.steps} steps")
    rows = {}
    for stride in (1, 2):
        torch.manual_seed(0)
        clf = Classifier(6, 1, widths=(8, 16, 32, 64), stem_stride=stride)
        pol = MaskPolicy(grid=8, in_channels=1, stem_stride=stride)
        state = (clf, pol, torch.optim.SGD(clf.parameters(), lr=0.1), torch.optim.SGD(pol.parameters(), lr=0.01), x, y)
        for name, fn in (("pretrain", pretrain_step), ("plain", plain_step)):
            fn(*state)  # warm-up
            t = time.perf_counter()
            for _ in range(args.steps):
                fn(*state)
            rows[(name, stride)] = (time.perf_counter() - t) / args.steps
    for name in ("pretrain", "plain"):
        a, b = rows[(name, 1)], rows[(name, 2)]
        print(f"{name:>9} step: stem stride 1 {a * 1e3:7.1f} ms | stride 2 {b * 1e3:7.1f} ms | {a / b:.1f}x")


if __name__ == "__main__":
    main()
