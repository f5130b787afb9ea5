"""Policy filtration (PF-PPO, Zhang/Shen et al., arXiv 2409.06957) and its R² diagnostic.

The reward model is more reliable in some reward regions than others, so PF-PPO samples N responses
per prompt, **ranks them by reward within the prompt**, and trains PPO only on some ranks:

=========  ===================================================  ====================================
strategy   paper's weight vector over ranks (best first)        kept set used for training here
=========  ===================================================  ====================================
none       (PPO-M: no filter)                                   all N
bon        (1, 0, ..., 0)                                       the best
br         (1/2, 1/(2(N-1)), ..., 1/(2(N-1)))                   the best + one uniformly random other
bw         (1/2, 0, ..., 0, 1/2)                                the best and the worst
=========  ===================================================  ====================================

The kept sets are the authors' "filter" implementation (about 2 of N=5 kept; dropped samples feed
neither actor nor critic). The general forms are :class:`RankWindow` (fixed ranks + k uniformly random
others; all four strategies are instances) and :class:`RankWeights` (the paper's Categorical(w) over
ranks, drawn ``draws`` times with replacement per prompt; strategy names ``paper-br``/``paper-bw``/
``paper-bon``). Paper vs code: the paper defines BR as drawing from w, so the best is *likely* but not
certain to be used; the authors' filter code keeps the best plus one uniformly random other (``br``); their
reweight code instead resamples the whole buffer with replacement using the weights (0.4 best / 0.1 others). Filtering is per prompt; the verl port's ``max_min``/``max_random`` rank over the whole
batch instead and are not BR/BW.

**Ties** (the paper does not discuss them): ranks come from a stable descending sort, so among equal
rewards the lower sample index ranks higher. Hence "best" is the first maximum (as in the authors'
``list.index(max)``), "worst" is the last minimum, and with all N rewards equal BW still keeps two
samples (indices 0 and N-1), as the authors' reweight code does.

**R²** (paper §4 "Weight choice"): fit a line score ~ reward over the samples the filtered policy
produces and report the coefficient of determination. ``bins=None`` uses every sample (R² of the
least-squares line = squared Pearson correlation); ``bins=k`` is the paper's form, which first groups
responses with similar rewards and treats each group's (mean reward, mean score) as one point; the
paper does not give the binning, we use k equal-count groups of the reward-sorted samples by default.
Optional ``weights`` (e.g. :func:`inclusion_probs`) give the *expected* R² of a random strategy such as
BR without sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["STRATEGIES", "RankWindow", "RankWeights", "resolve", "paper_weights", "ranks", "select",
           "inclusion_probs", "r_squared", "reliability_curve"]

STRATEGIES = ("none", "bon", "br", "bw")


@dataclass(frozen=True)
class RankWindow:
    """Keep the responses at fixed ``ranks`` (0 = best, -1 = worst) plus ``n_random`` drawn uniformly
    without replacement from the other ranks. ``ranks=None`` keeps every rank (no filtering)."""

    ranks: tuple[int, ...] | None = (0,)
    n_random: int = 0

    def __post_init__(self):
        if self.n_random < 0:
            raise ValueError(f"n_random must be >= 0, got {self.n_random}")


@dataclass(frozen=True)
class RankWeights:
    """The paper's form: per prompt draw a rank ``draws`` times from Categorical(``weights``) (best rank
    first, length N, normalised here) with replacement and keep the responses drawn at least once.

    ``weights`` may also be a strategy name (``"br"``, ``"bw"``, ``"bon"``): the paper's vector for that
    strategy at whatever N the rewards have. The strategy names ``paper-br``, ``paper-bw``, ``paper-bon``
    resolve to ``RankWeights(name, draws=2, replacement=False)``: two *distinct* ranks, so they keep the
    paper's "about 2 of N" (with replacement BW's union of two draws would keep 1.5 on average). Without
    replacement, ``draws`` is capped at the number of ranks with positive weight (BoN keeps one).
    """

    weights: tuple[float, ...] | str
    draws: int = 2
    replacement: bool = True

    def probs(self, n: int) -> torch.Tensor:
        weights = paper_weights(self.weights, n) if isinstance(self.weights, str) else self.weights
        w = torch.tensor(weights, dtype=torch.float64)
        if w.numel() != n or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"RankWeights needs {n} non-negative weights with a positive sum, got {weights}")
        return w / w.sum()


NAMED = {
    "none": RankWindow(ranks=None),
    "bon": RankWindow(ranks=(0,)),
    "br": RankWindow(ranks=(0,), n_random=1),
    "bw": RankWindow(ranks=(0, -1)),
}


def resolve(strategy) -> RankWindow | RankWeights:
    """A strategy name (none | bon | br | bw, case-insensitive) or object -> its object form."""
    if isinstance(strategy, (RankWindow, RankWeights)):
        return strategy
    key = str(strategy).lower().replace("-", "").replace("_", "")
    key = {"ppom": "none", "bestofn": "bon", "bestrandom": "br", "bestworst": "bw"}.get(key, key)
    if key.startswith("paper") and key[5:] in ("bon", "br", "bw"):
        return RankWeights(key[5:], draws=2, replacement=False)
    if key not in NAMED:
        raise ValueError(f"unknown filtration strategy {strategy!r}; use one of {', '.join(STRATEGIES)} "
                         f"or a RankWindow/RankWeights object")
    return NAMED[key]


def paper_weights(strategy: str, n: int) -> tuple[float, ...]:
    """The paper's weight vector over the N reward ranks (best first) for bon, br, bw (none: uniform)."""
    s = resolve(strategy)
    if isinstance(s, RankWeights):
        raise ValueError(f"{strategy!r} is already a weight vector form")
    if s is NAMED["none"]:
        return tuple([1.0 / n] * n)
    if s is NAMED["bon"]:
        return tuple([1.0] + [0.0] * (n - 1))
    if s is NAMED["br"]:
        return tuple([0.5] + [0.5 / (n - 1)] * (n - 1)) if n > 1 else (1.0,)
    if s is NAMED["bw"]:
        return tuple([0.5] + [0.0] * (n - 2) + [0.5]) if n > 1 else (1.0,)
    raise ValueError(f"no paper weight vector for {strategy!r}")


def _check(rewards: torch.Tensor) -> torch.Tensor:
    rewards = torch.as_tensor(rewards)
    if rewards.dim() != 2 or rewards.shape[1] < 1:
        raise ValueError(f"rewards must be [prompts, N responses], got shape {tuple(rewards.shape)}")
    if torch.isnan(rewards.float()).any():
        raise ValueError("rewards contain NaN; score every response before filtering")
    return rewards


def ranks(rewards: torch.Tensor) -> torch.Tensor:
    """``order[p, r]`` = index of the response at rank r (0 = highest reward) of prompt p; ties -> lower
    index first (stable sort)."""
    return torch.sort(_check(rewards), dim=1, descending=True, stable=True).indices


def select(rewards: torch.Tensor, strategy="none", generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask ``[P, N]`` of the responses kept for training, per prompt, ranked by reward."""
    rewards = _check(rewards)
    s = resolve(strategy)
    P, N = rewards.shape
    order = ranks(rewards)
    keep_rank = torch.zeros(P, N, dtype=torch.bool)
    if isinstance(s, RankWindow):
        if s.ranks is None:
            return torch.ones(P, N, dtype=torch.bool, device=rewards.device)
        fixed = sorted({r % N for r in s.ranks if -N <= r < N})
        keep_rank[:, fixed] = True
        rest = [r for r in range(N) if r not in fixed]
        k = min(s.n_random, len(rest))
        if k > 0:
            noise = torch.rand(P, len(rest), generator=generator)
            pick = torch.topk(noise, k, dim=1).indices  # k uniformly random without replacement
            keep_rank[torch.arange(P)[:, None], torch.tensor(rest)[pick]] = True
    else:
        w = s.probs(N).float()
        draws = s.draws if s.replacement else min(s.draws, int((w > 0).sum()))
        drawn = torch.multinomial(w.expand(P, N), draws, replacement=s.replacement, generator=generator)
        keep_rank[torch.arange(P)[:, None], drawn] = True
    mask = torch.zeros(P, N, dtype=torch.bool)
    mask.scatter_(1, order.cpu(), keep_rank)
    return mask.to(rewards.device)


def inclusion_probs(rewards: torch.Tensor, strategy="none") -> torch.Tensor:
    """Probability ``[P, N]`` that :func:`select` keeps each response (1/0 for deterministic strategies)."""
    rewards = _check(rewards)
    s = resolve(strategy)
    P, N = rewards.shape
    if isinstance(s, RankWindow):
        if s.ranks is None:
            return torch.ones(P, N, dtype=torch.float64)
        p_rank = torch.zeros(N, dtype=torch.float64)
        fixed = sorted({r % N for r in s.ranks if -N <= r < N})
        p_rank[fixed] = 1.0
        rest = [r for r in range(N) if r not in fixed]
        if rest and s.n_random:
            p_rank[rest] = min(s.n_random, len(rest)) / len(rest)
    elif s.replacement:
        p_rank = 1.0 - (1.0 - s.probs(N)) ** s.draws
    else:
        p_rank = _without_replacement_inclusion(s.probs(N), s.draws)
    out = torch.zeros(P, N, dtype=torch.float64)
    out.scatter_(1, ranks(rewards).cpu(), p_rank.expand(P, N).clone())
    return out


def _without_replacement_inclusion(w: torch.Tensor, draws: int) -> torch.Tensor:
    """P(rank i is among ``draws`` successive draws without replacement from Categorical(w)), exactly,
    by enumerating the draw sequences (N^draws of them: small for PF-PPO's N and 2 draws)."""
    w = w.double()
    n, draws = w.numel(), min(draws, int((w > 0).sum()))
    p_in = torch.zeros(n, dtype=torch.float64)

    def walk(prob: float, taken: tuple[int, ...], left: float):
        if len(taken) == draws:
            p_in[list(taken)] += prob
            return
        for i in range(n):
            if i not in taken and w[i] > 0:
                walk(prob * float(w[i]) / left, taken + (i,), left - float(w[i]))

    walk(1.0, (), float(w.sum()))
    return p_in


def _flat(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().reshape(-1).numpy()
    return np.asarray(a, dtype=np.float64).reshape(-1)


def r_squared(rewards, scores, bins: int | None = None, *, weights=None, binning: str = "quantile") -> float:
    """R² of the least-squares line ``score ~ reward`` (the paper's reliability measure).

    ``bins=None``: over all given samples; equals the squared Pearson correlation (and
    ``scipy.stats.linregress(...).rvalue ** 2``). ``bins=k``: the paper's grouped form, k groups of
    similar reward (``binning="quantile"``: equal-count groups of the reward-sorted samples;
    ``"width"``: equal-width reward intervals, empty ones dropped), each group's mean reward and mean
    score as one point. ``weights`` (>= 0, same shape) weight the samples (weighted least squares and
    weighted group means), e.g. :func:`inclusion_probs` for the expected kept set of a random strategy.

    Returns NaN when R² is undefined (fewer than 2 points or constant scores) and 0.0 when the rewards are
    constant but the scores are not (the fitted line is flat).
    """
    x, y = _flat(rewards), _flat(scores)
    if x.shape != y.shape:
        raise ValueError(f"rewards ({x.size}) and scores ({y.size}) must have the same number of samples")
    w = np.ones_like(x) if weights is None else _flat(weights)
    if w.shape != x.shape or (w < 0).any():
        raise ValueError("weights must be non-negative and shaped like rewards")
    ok = (w > 0) & np.isfinite(x) & np.isfinite(y)
    x, y, w = x[ok], y[ok], w[ok]
    if bins is not None:
        if bins < 2:
            raise ValueError(f"bins must be >= 2 (or None for no grouping), got {bins}")
        if binning == "quantile":
            order = np.argsort(x, kind="stable")
            groups = [g for g in np.array_split(order, min(bins, x.size)) if g.size]
        elif binning == "width":
            if x.size == 0:
                return float("nan")
            edges = np.linspace(x.min(), x.max(), bins + 1)
            idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
            groups = [np.flatnonzero(idx == b) for b in range(bins) if (idx == b).any()]
        else:
            raise ValueError(f"binning must be 'quantile' or 'width', got {binning!r}")
        x = np.array([np.average(x[g], weights=w[g]) for g in groups])
        y = np.array([np.average(y[g], weights=w[g]) for g in groups])
        w = np.ones_like(x)
    if x.size < 2:
        return float("nan")
    mx, my = np.average(x, weights=w), np.average(y, weights=w)
    sxx = np.sum(w * (x - mx) ** 2)
    syy = np.sum(w * (y - my) ** 2)
    sxy = np.sum(w * (x - mx) * (y - my))
    if syy <= 1e-15 * max(1.0, np.sum(w * y**2)):
        return float("nan")
    if sxx <= 1e-15 * max(1.0, np.sum(w * x**2)):
        return 0.0
    return float(min(1.0, sxy**2 / (sxx * syy)))


def reliability_curve(rewards, scores, bins: int = 10, binning: str = "quantile", confidence: float = 0.95):
    """The paper's Figure-1 analysis: actual score (pass rate) per reward bin, with counts and intervals.

    Rewards are grouped as in :func:`r_squared` (``quantile``: equal-count groups of the reward-sorted
    samples; ``width``: equal-width intervals, empty ones dropped). Where the curve is steep and its bins
    are tight the reward is reliable; a flat stretch is a region where it says little about the score.
    Binary scores get exact Clopper–Pearson intervals (``scipy.stats.binomtest``), others a Student t interval.
    Returns a DataFrame: bin, reward_low, reward_high, reward_mean, score_mean, count, ci_low, ci_high.
    """
    import pandas as pd
    from scipy import stats

    x, y = _flat(rewards), _flat(scores)
    if x.shape != y.shape:
        raise ValueError(f"rewards ({x.size}) and scores ({y.size}) must have the same number of samples")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if binning == "quantile":
        groups = [g for g in np.array_split(np.argsort(x, kind="stable"), min(bins, max(1, x.size))) if g.size]
    elif binning == "width":
        edges = np.linspace(x.min(), x.max(), bins + 1) if x.size else np.zeros(bins + 1)
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
        groups = [np.flatnonzero(idx == b) for b in range(bins) if (idx == b).any()]
    else:
        raise ValueError(f"binning must be 'quantile' or 'width', got {binning!r}")
    binary = bool(np.isin(y, (0.0, 1.0)).all())
    rows = []
    for b, g in enumerate(groups):
        ys = y[g]
        if binary:
            ci = stats.binomtest(int(ys.sum()), ys.size).proportion_ci(confidence, method="exact")
            lo, hi = ci.low, ci.high
        elif ys.size > 1 and ys.std() > 0:
            lo, hi = stats.t.interval(confidence, ys.size - 1, loc=ys.mean(), scale=stats.sem(ys))
        else:
            lo = hi = float(ys.mean())
        rows.append({"bin": b, "reward_low": float(x[g].min()), "reward_high": float(x[g].max()),
                     "reward_mean": float(x[g].mean()), "score_mean": float(ys.mean()), "count": int(g.size),
                     "ci_low": float(lo), "ci_high": float(hi)})
    return pd.DataFrame(rows, columns=["bin", "reward_low", "reward_high", "reward_mean", "score_mean", "count",
                                       "ci_low", "ci_high"])
