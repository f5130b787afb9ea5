"""Seaborn/matplotlib figures shared by the tutorial notebooks (and handy in any analysis session).

Each function takes plain arrays or the run-folder tables (DESIGN.md contract) and returns a
``matplotlib.figure.Figure`` (or draws on a given ``ax``); none of them computes a method's quantity
itself: R², posteriors and masks come from ``pfkit.rl`` / ``pfkit.noise`` and are only drawn here.
Figures are created with ``matplotlib.figure.Figure`` (not pyplot) where a whole figure is returned,
so they display in Jupyter without leaking pyplot state between cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def theme() -> None:
    """The notebooks' seaborn theme; in Jupyter, also show returned ``Figure`` objects inline as PNG."""
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="notebook")
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:
        return
    if get_ipython() is not None:
        set_matplotlib_formats("png")  # registers the PNG formatter for matplotlib.figure.Figure


def figure(ncols: int = 1, nrows: int = 1, width: float = 4.0, height: float = 3.2, **kw):
    """(Figure, axes) of ``nrows x ncols`` panels of ``width x height`` inches each (pyplot-free)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=True, **kw)
    return fig, axes


def _hw(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] / [N, H, W] / [N, H, W, C] -> [N, H, W] (grey) or [N, H, W, 3] for imshow."""
    a = np.asarray(images, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 1, -1)
    if a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    return a


# ------------------------------------------------------------------------------------------ images
def image_grid(images, labels, class_names: Sequence[str] | None = None, *, per_class: int = 6,
               row_titles: Sequence[str] | None = None, seed: int = 0, size: float = 1.1):
    """``per_class`` random examples of each class, one row per class (grey or RGB images)."""
    imgs, labels = _hw(images), np.asarray(labels).reshape(-1)
    classes = sorted(np.unique(labels).tolist())
    rng = np.random.default_rng(seed)
    fig, axes = figure(per_class, len(classes), size, size)
    axes = np.atleast_2d(axes)
    for r, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        pick = rng.choice(idx, min(per_class, len(idx)), replace=False)
        for j, ax in enumerate(axes[r]):
            ax.axis("off")
            if j < len(pick):
                ax.imshow(imgs[pick[j]], cmap="gray", vmin=0, vmax=1)
        name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
        axes[r, 0].set_title(row_titles[r] if row_titles is not None else name, fontsize=8, loc="left")
    return fig


def mask_panel(images, mean_maps, masks, masked, *, n: int = 6, titles: Sequence[str] | None = None,
               size: float = 1.4):
    """Rows: image, E[mask] = α/(α+β) per patch, one sampled (upsampled, blurred) mask, masked image."""
    rows = [("image", _hw(images), "gray", (0, 1)), ("E[mask] per patch", np.asarray(mean_maps), "viridis", (0, 1)),
            ("sampled mask", np.asarray(masks), "viridis", (0, 1)), ("image × mask", _hw(masked), "gray", (0, 1))]
    n = min(n, len(rows[0][1]))
    fig, axes = figure(n, len(rows), size, size)
    axes = np.atleast_2d(axes)
    for r, (name, arr, cmap, (lo, hi)) in enumerate(rows):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(arr[j], cmap=cmap, vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0 and titles is not None:
                ax.set_title(str(titles[j]), fontsize=7)
    return fig


def beta_densities(params: Mapping[str, tuple[float, float]], ax=None, *, points: int = 400):
    """Density of Beta(α, β) for each ``label -> (α, β)``, on one axis."""
    import seaborn as sns
    from scipy.stats import beta as beta_dist

    if ax is None:
        fig, ax = figure(width=5, height=3.2)
    else:
        fig = ax.figure
    x = np.linspace(0.001, 0.999, points)
    colors = sns.color_palette("viridis", max(len(params), 1))
    for color, (label, (a, b)) in zip(colors, params.items()):
        ax.plot(x, beta_dist.pdf(x, a, b), color=color, label=f"{label}: α={a:.2f}, β={b:.2f}")
    ax.set_xlabel("p (success probability / mask value)")
    ax.set_ylabel("density")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    return fig


# ---------------------------------------------------------------------------------------- PF-PPO
def reward_vs_score(df: pd.DataFrame, *, reward: str = "reward", score: str = "score", hue: str | None = None,
                    bins: int = 8, r2: float | None = None, ax=None, jitter: float = 0.04, seed: int = 0):
    """Reward-model score vs unit-test score per sample (jittered) with the mean score per reward bin.

    The binned line is where the reward model's reliability shows: flat or non-monotone stretches are
    reward ranges in which a higher reward does not mean a better program.
    """
    import seaborn as sns

    if ax is None:
        fig, ax = figure(width=5, height=3.6)
    else:
        fig = ax.figure
    y = df[score].to_numpy(np.float64)
    y = y + np.random.default_rng(seed).uniform(-jitter, jitter, len(y))
    sns.scatterplot(x=df[reward].to_numpy(), y=y, hue=df[hue].to_numpy() if hue else None, s=14, alpha=0.5,
                    linewidth=0, ax=ax)
    if len(df) >= 2:
        q = pd.qcut(df[reward], q=min(bins, len(df)), duplicates="drop")
        means = df.groupby(q, observed=True)[[reward, score]].mean()
        ax.plot(means[reward], means[score], "o-", color="black", label="mean score per reward bin")
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("reward (reward model)")
    ax.set_ylabel("score (unit tests)")
    if r2 is not None:
        ax.set_title(f"R² = {r2:.3f}")
    return fig


def strategy_bars(table: pd.DataFrame, *, x: str = "label", ys: Sequence[str] = ("r2", "kept_score")):
    """One bar panel per column of ``table`` (e.g. ``pfkit.rl.filtration.strategy_table``)."""
    import seaborn as sns

    fig, axes = figure(len(ys), 1, 3.6, 3.0)
    for ax, col in zip(np.atleast_1d(axes), ys):
        sns.barplot(table, x=x, y=col, hue=x, legend=False, ax=ax, palette="viridis")
        ax.set_xlabel("")
        for c in ax.containers:
            ax.bar_label(c, fmt="%.3f", fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------ curves
def curves(frames: Mapping[str, pd.DataFrame], x: str, ys: Sequence[str], *, hue_name: str = "run",
           titles: Sequence[str] | None = None, width: float = 4.0):
    """One panel per metric ``ys``, one line per entry of ``frames`` (e.g. several runs' metrics.csv)."""
    import seaborn as sns

    long = []
    for name, f in frames.items():
        for y in ys:
            if y in f.columns and x in f.columns:
                part = f[[x, y]].dropna()
                long.append(pd.DataFrame({x: part[x].to_numpy(), "value": part[y].to_numpy(), "metric": y,
                                          hue_name: name}))
    fig, axes = figure(len(ys), 1, width, 3.0)
    axes = np.atleast_1d(axes)
    data = pd.concat(long, ignore_index=True) if long else pd.DataFrame(columns=[x, "value", "metric", hue_name])
    for i, (ax, y) in enumerate(zip(axes, ys)):
        d = data[data["metric"] == y]
        if len(d):
            sns.lineplot(d, x=x, y="value", hue=hue_name, ax=ax, marker="o", markersize=3, legend=i == 0)
        ax.set_title(titles[i] if titles is not None else y, fontsize=9)
        ax.set_ylabel("")
    return fig


# ------------------------------------------------------------------------------------------- VADE
def thompson_panel(p_mean, scores, selected, uncertainty=None, ax=None):
    """Information-gain score of one Thompson draw vs posterior mean per prompt; selected prompts ringed.

    ``uncertainty`` (e.g. the posterior sd) colours the points: the draw scatters uncertain prompts widely,
    which is how Thompson sampling keeps exploring them.
    """
    if ax is None:
        fig, ax = figure(width=5, height=3.6)
    else:
        fig = ax.figure
    p_mean, scores = np.asarray(p_mean, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    sel = np.zeros(len(p_mean), dtype=bool)
    sel[np.asarray(selected, dtype=np.int64)] = True
    grid = np.linspace(0, 1, 201)
    ax.plot(grid, grid * (1 - grid), color="gray", lw=0.8, ls="--", label="p(1−p)")
    c = None if uncertainty is None else np.asarray(uncertainty, dtype=np.float64)
    sc = ax.scatter(p_mean, scores, c=c, cmap="viridis", s=18)
    ax.scatter(p_mean[sel], scores[sel], facecolors="none", edgecolors="red", s=70, label="selected")
    ax.set_xlabel("posterior mean α/(α+β)")
    ax.set_ylabel("score p̃(1−p̃) of a Thompson draw")
    if c is not None:
        fig.colorbar(sc, ax=ax, label="posterior sd")
    ax.legend(fontsize=7, loc="upper right")
    return fig
