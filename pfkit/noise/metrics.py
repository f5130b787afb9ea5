"""Classification metrics of the paper's table and "what did the policy learn" statistics of its masks.

The paper's RadImageNet table (author's page; sklearn in the sibling script) reports macro precision,
recall, F1, ROC-AUC and balanced accuracy. Here they come from torchmetrics (installed with Lightning;
scikit-learn is not in the venv). One difference: torchmetrics' multiclass AUROC is one-vs-rest, the
sibling script's sklearn call is one-vs-one; for two classes (PneumoniaMNIST) both equal the binary AUC.
Balanced accuracy is macro recall (the identical Recall and B.Acc columns of the paper's table).

Mask statistics: the Beta entropy per patch (``torch.distributions.Beta.entropy``), and whether the
policy's expected masks E[m] = α/(α+β) depend on the class (or modality) more than chance: the share of
their variance between groups (η² = SS_between / SS_total over all patches), with a permutation test of
the group labels (``scipy.stats.permutation_test``). A frozen random policy also gives image-dependent
masks (an untrained feature extractor still tells images apart), so the random-mask control's η² is
the chance level to compare a trained policy against, not zero.
"""

from __future__ import annotations

import numpy as np
import torch


def classification_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """acc, macro precision / recall / F1, macro one-vs-rest AUC, balanced accuracy (= macro recall)."""
    from torchmetrics.functional import classification as M  # lazy: torchmetrics imports take ~1 s

    logits, target = torch.as_tensor(logits).float(), torch.as_tensor(target).long()
    probs = logits.softmax(-1)
    kw = dict(num_classes=num_classes, average="macro")
    recall = float(M.multiclass_recall(probs, target, **kw))
    return {
        "acc": float(M.multiclass_accuracy(probs, target, num_classes=num_classes, average="micro")),
        "precision": float(M.multiclass_precision(probs, target, **kw)),
        "recall": recall,
        "f1": float(M.multiclass_f1_score(probs, target, **kw)),
        "auc": float(M.multiclass_auroc(probs, target, num_classes=num_classes, average="macro")),
        "balanced_acc": recall,
    }


def expected_mask(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """E[m] = α / (α + β) per patch, flattened to [N, patches]."""
    a, b = log_alpha.exp(), log_beta.exp()
    return (a / (a + b)).flatten(1)


def beta_entropy(log_alpha: torch.Tensor, log_beta: torch.Tensor) -> torch.Tensor:
    """Mean differential entropy of the per-patch Betas (0 for Beta(1, 1), negative as they sharpen)."""
    return torch.distributions.Beta(log_alpha.exp(), log_beta.exp()).entropy().mean()


def eta_squared(features: np.ndarray, groups: np.ndarray) -> float:
    """Share of the total sum of squares (over all feature dimensions) that lies between group means."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    g = np.asarray(groups).ravel()
    centred = x - x.mean(0)
    total = float((centred**2).sum())
    if total == 0:
        return 0.0
    between = sum(float((g == k).sum()) * float((centred[g == k].mean(0) ** 2).sum()) for k in np.unique(g))
    return between / total


def group_dependence(features: np.ndarray, groups: np.ndarray, *, n_resamples: int = 999, seed: int = 0
                     ) -> dict[str, float]:
    """η² of ``features`` [N, D] by ``groups`` [N] and its permutation p-value (labels shuffled).

    p = (1 + #{permuted η² >= observed}) / (1 + n_resamples): small when masks differ between groups
    more than a random relabelling of the same masks would."""
    from scipy.stats import permutation_test

    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    g = np.asarray(groups).ravel()
    levels, codes = np.unique(g, return_inverse=True)
    if len(levels) < 2:
        return {"eta2": float("nan"), "p": float("nan"), "n": int(len(g))}
    centred = x - x.mean(0)
    total = float((centred**2).sum())
    onehot_eye = np.eye(len(levels))

    def stat(c, axis=-1):  # vectorised over permutations: c [..., N] group codes
        oh = onehot_eye[np.asarray(c, dtype=np.int64)]  # [..., N, K]
        sums = np.einsum("...nk,nd->...kd", oh, centred)
        counts = oh.sum(-2)[..., None]
        between = ((sums**2) / np.maximum(counts, 1)).sum((-1, -2))
        return between / total if total > 0 else np.zeros_like(between)

    res = permutation_test((codes,), stat, permutation_type="pairings", n_resamples=n_resamples,
                           alternative="greater", vectorized=True, random_state=seed)
    return {"eta2": float(res.statistic), "p": float(res.pvalue), "n": int(len(g))}
