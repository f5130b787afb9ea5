"""Evaluation helpers: frozen features, macro-F1, the few-shot "unseen concept" linear probe and fine-tuning.

The paper's unseen-concept curves plot macro-F1 against the number of labelled training samples
(16 … 256) on transfer tasks the pretraining never saw, over repeated draws. Here: freeze a classifier's
backbone, fit a multinomial logistic regression (L-BFGS, L2) on n labelled samples of the held-out
classes (stratified draw), score macro-F1 on their test set, repeat with other draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def extract_features(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256
                     ) -> torch.Tensor:
    """``model.features`` over images [N, C, H, W] in eval mode (BatchNorm running statistics)."""
    was = model.training
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    out = torch.cat([model.features(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    was = model.training
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    out = torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def macro_f1(pred, target, num_classes: int | None = None) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN). Classes with no true and no predicted
    sample are skipped (as sklearn, whose default labels are the classes present)."""
    pred, target = np.asarray(pred).ravel(), np.asarray(target).ravel()
    k = num_classes or int(max(pred.max(initial=0), target.max(initial=0))) + 1
    f1s = []
    for c in range(k):
        tp = np.sum((pred == c) & (target == c))
        fp = np.sum((pred == c) & (target != c))
        fn = np.sum((pred != c) & (target == c))
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else 0.0


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, num_classes: int, *,
                 weight_decay: float = 1e-2, max_iter: int = 100) -> torch.Tensor:
    """Multinomial logistic regression on standardised features; returns test predictions."""
    mu, sd = train_x.mean(0), train_x.std(0, unbiased=False).clamp_min(1e-6)
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    y = torch.as_tensor(train_y, dtype=torch.long)
    w = torch.zeros(a.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y) + weight_decay * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return (b @ w + bias).argmax(1)


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n indices with classes as balanced as the pool allows (every class gets >= 1 when n >= classes)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
    take = {c: min(n // len(classes), len(per[c])) for c in classes}
    chosen = [per[c][: take[c]] for c in classes]
    rest = np.concatenate([per[c][take[c]:] for c in classes])
    chosen.append(rng.choice(rest, min(n - sum(take.values()), len(rest)), replace=False))
    return np.concatenate(chosen).astype(np.int64)


def few_shot(pool_x: torch.Tensor, pool_y: np.ndarray, test_x: torch.Tensor, test_y: np.ndarray, *,
             shots: Sequence[int] = (16, 32, 64, 128, 256), repeats: int = 5, seed: int = 0) -> list[dict]:
    """Macro-F1 of a linear probe trained on n in ``shots`` labelled pool samples; one row per (n, repeat)."""
    k = int(max(np.max(pool_y), np.max(test_y))) + 1
    rows = []
    for n in shots:
        if n > len(pool_y):
            continue
        for r in range(repeats):
            idx = stratified_indices(pool_y, n, np.random.default_rng([seed, n, r]))
            pred = linear_probe(pool_x[idx], torch.as_tensor(pool_y[idx]), test_x, k)
            rows.append({"n": int(n), "repeat": r, "macro_f1": macro_f1(pred.numpy(), test_y, k)})
    return rows


def finetune_curve(model: torch.nn.Module, pool_x, pool_y: np.ndarray, test_x, test_y: np.ndarray, *,
                   shots: Sequence[int] = (16, 32, 64, 128, 256), steps: int = 40, lr: float = 1e-3,
                   batch_size: int = 32, seed: int = 0) -> list[dict]:
    """Macro-F1 on the unseen test set after briefly fine-tuning a *copy* of the whole network (backbone +
    a new linear head) on n stratified labelled pool samples, for n in ``shots``: one row per n.

    The probe asks whether the frozen features already separate the new concepts; this asks whether
    they are a good starting point to adapt from (the paper's unseen-concept curves fine-tune).
    AdamW, ``steps`` minibatches of ``min(n, batch_size)`` drawn with replacement, no augmentation;
    BatchNorm in train mode while adapting, eval mode for the test predictions."""
    import copy

    pool_x, test_x = torch.as_tensor(pool_x, dtype=torch.float32), torch.as_tensor(test_x, dtype=torch.float32)
    k = int(max(np.max(pool_y), np.max(test_y))) + 1
    rows = []
    for n in shots:
        if n > len(pool_y):
            continue
        rng = np.random.default_rng([seed, n, 1])
        idx = stratified_indices(pool_y, n, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        net = copy.deepcopy(model)
        dim = net.head.in_features
        net.head = torch.nn.Linear(dim, k)
        torch.nn.init.normal_(net.head.weight, std=0.01, generator=gen)
        torch.nn.init.zeros_(net.head.bias)
        opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
        xs, ys = pool_x[idx], torch.as_tensor(pool_y[idx], dtype=torch.long)
        net.train()
        for _ in range(steps):
            b = torch.randint(0, len(idx), (min(len(idx), batch_size),), generator=gen)
            loss = F.cross_entropy(net(xs[b]), ys[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        pred = predict(net, test_x).numpy()
        rows.append({"n": int(n), "macro_f1": macro_f1(pred, test_y, k), "steps": int(steps)})
    return rows
