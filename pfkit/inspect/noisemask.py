"""Noise-mask inspector: ``pfkit inspect noisemask RUN_DIR``.

Reads ``masks/epoch_XXX.npz`` (a fixed panel of validation images: ``image``, ``alpha``, ``beta``,
``label``, and the ``mask``/``masked`` the run drew) and ``metrics.csv``. For an epoch and an image it
shows the image, the policy's α and β maps, the mean mask α/(α+β), a mask drawn from
Beta(α, β) and the masked image; the mask can be redrawn with a seed through the same functions the
training uses (``pfkit.noise.mask.sample_mask`` + ``upsample_blur``: nearest upsampling, then a
Gaussian blur). Per-class average masks show whether the policy learned class-specific noise; the
accuracy curves come from metrics.csv.

What the policy learned: when the run folder has the module's per-epoch ``mask_stats`` table, the page
plots the Beta entropy and the class / modality dependence of the expected masks (η² with its
permutation p-value) over epochs. Whether masks depend on the *image*: for the panel, the distance
between masks of two different images is set against the distance between two draws for the same image
(overall, same class, other class), and the α/β maps of two chosen images are shown side by side.

α/β are stored as concentrations (the contract). A map with a value <= 0 cannot be a concentration,
so it is read as the heads' raw log-concentration and exponentiated; the page says when that happened.
A redrawn mask multiplies the image *around the panel's mean intensity*: the run multiplies the
normalised image (pulling pixels toward the dataset mean) but stores the panel in pixel space.
"""

from __future__ import annotations

import html
import importlib
import re
import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C

TITLE = "Noise-mask inspector"
REQUIRED = ("image", "alpha", "beta", "label")
DEFAULT_SIGMA, DEFAULT_KERNEL = 1.0, 5  # pfkit.noise.mask defaults; a run may override (npz or config.yaml)
SAVED, SAMPLED = "saved by the run", "sampled with seed"
CORRECT, WRONG = "correct", "wrong"
SHOWN = 200  # images listed by the finder; the CSV has them all


@dataclass(frozen=True)
class ImageQuery:
    """A filter over one epoch's panel images; ranges are (min, max) with None open, choices ANY or a value."""

    label: str = C.ANY
    pred: str = C.ANY
    correct: str = C.ANY
    mask_mean: tuple = (None, None)
    mask_sd: tuple = (None, None)


def found_markdown(found: pd.DataFrame, total: int, epoch: int) -> str:
    if found.empty:
        return f"**0** of {total} images match (epoch {epoch})."
    acc = "" if found["correct"].isna().all() else f" · accuracy **{C.fmt(found['correct'].astype(float).mean())}**"
    return (f"**{len(found)}** of {total} images match (epoch {epoch}){acc} · mean mask α/(α+β) "
            f"**{C.fmt(found['mask_mean'].mean())}** · mask sd **{C.fmt(found['mask_sd'].mean())}** (spatial sd of "
            f"α/(α+β) over the patches, averaged)" + (f" · listing the first {SHOWN} (the CSV has all)"
                                                      if len(found) > SHOWN else "") + ". Select a row to open that image.")


def found_table(found: pd.DataFrame) -> pd.DataFrame:
    """The images as listed on the page (the first SHOWN; the CSV has them all)."""
    t = found.head(SHOWN).copy()
    for c in ("mask_mean", "mask_sd", "alpha_mean", "beta_mean", "saved_mask_mean"):
        if c in t:
            t[c] = t[c].astype(float).round(4)
    return t


def _square(a: np.ndarray) -> np.ndarray:
    """[K, g, g] (or [K, 1, g, g], [K, g*g]) -> [K, g, g]."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim == 2:
        g = int(round(np.sqrt(a.shape[1])))
        if g * g != a.shape[1]:
            raise ValueError(f"cannot make a square grid of {a.shape[1]} patches")
        a = a.reshape(-1, g, g)
    if a.ndim != 3:
        raise ValueError(f"expected [K, g, g] maps, got shape {a.shape}")
    return a


def _images(a: np.ndarray) -> np.ndarray:
    """Any of [K, H, W], [K, C, H, W] (C in 1, 3), [K, H, W, C] -> [K, C, H, W] float."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[1] in (1, 3):
        return a
    if a.ndim == 4 and a.shape[-1] in (1, 3):
        return a.transpose(0, 3, 1, 2)
    raise ValueError(f"expected images [K, H, W] or [K, C, H, W], got shape {a.shape}")


def _display(img: np.ndarray, like: np.ndarray | None = None) -> np.ndarray:
    """[C, H, W] -> something imshow takes, scaled to [0, 1] by the min/max of ``like`` (default: itself).

    The masked image is scaled like the clean one, so the mask's contrast loss stays visible."""
    x = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
    ref = x if like is None else (like[0] if like.shape[0] == 1 else like.transpose(1, 2, 0))
    lo, hi = float(np.min(ref)), float(np.max(ref))
    return np.clip((x - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(x)


def _find_in_config(text: str, names: tuple[str, ...]):
    for name in names:
        m = re.search(rf"^\s*{name}\s*:\s*([0-9.eE+-]+)\s*$", text, flags=re.M)
        if m:
            return float(m.group(1))
    return None


class Panel:
    """One epoch's panel with everything the views need, as float arrays."""

    def __init__(self, arrays: dict[str, np.ndarray], path):
        missing = [k for k in REQUIRED if k not in arrays]
        if missing:
            raise C.NoData(f"{path} lacks {', '.join(missing)} (has {', '.join(arrays)}); "
                           f"the noise-mask contract needs {', '.join(REQUIRED)}, mask, masked.")
        self.image = _images(arrays["image"])
        alpha, beta = _square(arrays["alpha"]), _square(arrays["beta"])
        self.log_space = bool((alpha <= 0).any() or (beta <= 0).any())
        self.alpha, self.beta = (np.exp(alpha), np.exp(beta)) if self.log_space else (alpha, beta)
        self.label = np.asarray(arrays["label"]).reshape(len(self.image), -1)[:, 0]
        self.pred = np.asarray(arrays["pred"]).reshape(-1) if "pred" in arrays else None
        # the run's drawn mask at pixel resolution: ``pixel_mask``, else ``mask`` when it is pixel-sized
        # (the grid-sized ``mask`` is only the draw before upsampling and blur)
        hw = tuple(self.image.shape[-2:])
        self.mask = None
        for key in ("pixel_mask", "mask"):
            if key in arrays:
                m = np.asarray(arrays[key], dtype=np.float64)
                m = m.reshape(len(self.image), *m.shape[-2:])
                if tuple(m.shape[-2:]) == hw:
                    self.mask = m
                    break
        self.masked = _images(arrays["masked"]) if "masked" in arrays else None
        # The run multiplies the *normalised* image, pulling pixels toward the dataset mean; the panel is
        # stored in pixel space, so a redrawn mask pulls toward the panel's mean (the dataset mean's estimate)
        self.pixel_mean = float(self.image.mean())
        if not (len(self.alpha) == len(self.beta) == len(self.label) == len(self.image)):
            raise C.NoData(f"{path}: image, alpha, beta and label have different panel sizes")
        self.mean = self.alpha / (self.alpha + self.beta)

    def __len__(self) -> int:
        return len(self.image)


class NoiseMasks:
    def __init__(self, run_dir):
        self.run = C.open_run(run_dir, "masks")
        self.epochs = self.run.mask_epochs()
        self._panels: dict[int, Panel] = {}
        self._distance_cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        # Beta sampling has no generator argument: a seeded draw re-seeds torch's global RNG. Gradio runs
        # event handlers in threads, so two draws at once would interleave and give the wrong masks.
        self._rng_lock = threading.Lock()
        self.sigma, self.kernel = DEFAULT_SIGMA, DEFAULT_KERNEL
        for cfg in (self.run.config_path, self.run.path / "hparams.yaml"):  # the run's blur (an npz key wins)
            if not cfg.is_file():
                continue
            text = cfg.read_text(errors="replace")
            self.sigma = _find_in_config(text, ("blur_sigma", "sigma")) or self.sigma
            k = _find_in_config(text, ("blur_kernel", "kernel_size", "kernel"))
            self.kernel = int(k) if k else self.kernel
            break
        self.panel(self.epochs[-1])  # fail now, with the page's banner, if the newest panel is unreadable
        try:
            self.metrics = self.run.metrics()
        except C.RunFolderError:
            self.metrics = None
        self.mask_stats = self.run.read("mask_stats") if self.run.has_table("mask_stats") else None

    def panel(self, epoch: int) -> Panel:
        if epoch not in self._panels:
            arrays = self.run.load_masks(int(epoch))
            p = Panel(arrays, self.run.mask_path(int(epoch)))
            for key, attr, cast in (("sigma", "sigma", float), ("kernel_size", "kernel", int)):
                if key in arrays:
                    setattr(self, attr, cast(np.asarray(arrays[key]).reshape(-1)[0]))
            self._panels[epoch] = p
        return self._panels[epoch]

    def sample(self, epoch: int, index: int, seed: int, sigma: float, kernel: int):
        """(grid mask [g, g], pixel mask [H, W], masked image [C, H, W]) for one image, seeded."""
        import torch

        from pfkit.noise.mask import sample_mask, upsample_blur

        p = self.panel(epoch)
        # draw for the whole panel and take one image: the same stream as the run's own panel draw, so the
        # run's panel seed (pfkit.modules.noisemask ``panel_seed``, default 0) reproduces its saved masks
        la = torch.log(torch.as_tensor(p.alpha, dtype=torch.float32))
        lb = torch.log(torch.as_tensor(p.beta, dtype=torch.float32))
        with self._rng_lock:
            grid, _, _ = sample_mask(la, lb, seed=int(seed))
        grid = grid[index : index + 1]
        pix = upsample_blur(grid, tuple(p.image.shape[-2:]), sigma=float(sigma), kernel_size=int(kernel))
        pix = pix[0, 0].double().numpy()
        m = p.pixel_mean
        return grid[0].double().numpy(), pix, (p.image[index] - m) * pix[None] + m

    def draws(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Two grid-mask draws for the whole panel, under seeds ``seed`` and ``seed + 1``: [K, g, g] each."""
        import torch

        from pfkit.noise.mask import sample_mask

        p = self.panel(epoch)
        la = torch.log(torch.as_tensor(p.alpha, dtype=torch.float32))
        lb = torch.log(torch.as_tensor(p.beta, dtype=torch.float32))
        with self._rng_lock:
            a = sample_mask(la, lb, seed=int(seed))[0]
            b = sample_mask(la, lb, seed=int(seed) + 1)[0]
        return a.double().numpy(), b.double().numpy()

    def _distances(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(d, labels): d[i, j] = RMS distance of draw 1 (seed) of image i's grid mask to draw 2 (seed + 1)
        of image j's; the diagonal compares two draws for one image. Kept per (epoch, seed): a view shows
        the all-pairs summary and the per-class table from the same matrix."""
        key = (int(epoch), int(seed))
        if key not in self._distance_cache:
            self._distance_cache[key] = self._compute_distances(*key)
        return self._distance_cache[key]

    def _compute_distances(self, epoch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.draws(epoch, seed)
        lab = self.panel(epoch).label
        k = len(a)
        a, b = a.reshape(k, -1), b.reshape(k, -1)
        # from |a|² + |b|² − 2 a·b (a [K, K, g²] difference array would be gigabytes for a large panel)
        sq = (a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T
        return np.sqrt(np.clip(sq, 0, None) / a.shape[1]), lab

    def image_dependence(self, epoch: int, seed: int) -> dict[str, float]:
        """RMS distance between grid masks: two draws for the same image vs draws for two different images
        (all pairs, pairs of the same class, pairs of different classes). If the policy's masks depend on
        the image, masks of different images are farther apart than two draws for one image."""
        d, lab = self._distances(epoch, seed)
        k = len(d)
        off = ~np.eye(k, dtype=bool)
        same = (lab[:, None] == lab[None]) & off
        other = lab[:, None] != lab[None]
        return {"same image": float(np.diag(d).mean()), "different images": float(d[off].mean()) if k > 1 else np.nan,
                "same class": float(d[same].mean()) if same.any() else np.nan,
                "different class": float(d[other].mean()) if other.any() else np.nan}

    def image_dependence_by_class(self, epoch: int, seed: int) -> pd.DataFrame:
        """The same distances per class c: two draws of one image of c; draws of two different images of c;
        an image of c against one of another class. (The panel npz carries no modality, so no per-modality
        rows; the module's mask_stats table has the modality η².)"""
        d, lab = self._distances(epoch, seed)
        off = ~np.eye(len(d), dtype=bool)
        rows = []
        for c in np.unique(lab):
            mine = lab == c
            within = off & mine[:, None] & mine[None]
            across = mine[:, None] & ~mine[None]
            rows.append({"class": c, "images": int(mine.sum()), "same image": float(np.diag(d)[mine].mean()),
                         "different images, same class": float(d[within].mean()) if within.any() else np.nan,
                         "vs other classes": float(d[across].mean()) if across.any() else np.nan})
        return pd.DataFrame(rows).round(4)

    # ----------------------------------------------------------------- finding images
    def image_table(self, epoch: int) -> pd.DataFrame:
        """One row per panel image: label, prediction, whether it is right, and its mask statistics
        (mean and spatial sd of the expected mask α/(α+β), mean α, mean β, the saved mask's mean)."""
        p = self.panel(epoch)
        k = len(p)
        flat = p.mean.reshape(k, -1)
        t = pd.DataFrame({"image": np.arange(k), "label": p.label,
                          "pred": p.pred if p.pred is not None else np.full(k, None),
                          "correct": (p.pred == p.label) if p.pred is not None else np.full(k, None),
                          "mask_mean": flat.mean(1), "mask_sd": flat.std(1),
                          "alpha_mean": p.alpha.reshape(k, -1).mean(1), "beta_mean": p.beta.reshape(k, -1).mean(1)})
        if p.mask is not None:
            t["saved_mask_mean"] = p.mask.reshape(k, -1).mean(1)
        return t

    def find(self, epoch: int, q: ImageQuery) -> pd.DataFrame:
        """The panel images of ``epoch`` matching ``q`` (C.BadQuery for a filter that cannot run)."""
        t = self.image_table(epoch)
        m = np.ones(len(t), dtype=bool)
        if q.label not in (None, "", C.ANY):
            m &= t["label"].astype(str).to_numpy() == str(q.label)
        if q.pred not in (None, "", C.ANY) or q.correct not in (None, "", C.ANY):
            if t["pred"].isna().all():
                raise C.BadQuery("this panel has no predictions (no 'pred' in the npz): clear the predicted / "
                                 "correct filters")
            if q.pred not in (None, "", C.ANY):
                m &= t["pred"].astype(str).to_numpy() == str(q.pred)
            m &= C.flag_mask(t["correct"].astype(bool), q.correct, CORRECT, WRONG)
        m &= C.range_mask(t["mask_mean"], *q.mask_mean, name="mean mask")
        m &= C.range_mask(t["mask_sd"], *q.mask_sd, name="mask sd")
        return t[m].reset_index(drop=True)

    def class_means(self, epoch: int) -> dict:
        p = self.panel(epoch)
        return {lab: p.mean[p.label == lab].mean(0) for lab in sorted(np.unique(p.label).tolist())}

    def accuracy(self) -> pd.DataFrame | None:
        """Accuracy columns of metrics.csv per epoch (last logged value of each)."""
        m = self.metrics
        if m is None:
            return None
        cols = [c for c in m.columns if "acc" in c.lower()]
        x = "epoch" if "epoch" in m.columns else "step" if "step" in m.columns else None
        if not cols or x is None:
            return None
        return m[[x, *cols]].groupby(x, as_index=True).last().dropna(how="all")


# ------------------------------------------------------------------------------------------- figures
def panel_figure(data: NoiseMasks, epoch: int, index: int, mode: str, seed: int, sigma: float, kernel: int):
    p = data.panel(epoch)
    if mode == SAMPLED or p.mask is None:
        _, pix, masked = data.sample(epoch, index, seed, sigma, kernel)
        what = f"sampled mask (seed {seed})"
    else:
        pix = p.mask[index]
        masked = p.masked[index] if p.masked is not None else (p.image[index] - p.pixel_mean) * pix[None] + p.pixel_mean
        what = "mask saved by the run"
    fig, axes = C.figure(10.5, 6.6, ncols=3, nrows=2)
    panels = [
        (axes[0, 0], _display(p.image[index]), f"image (label {p.label[index]})", "gray", None),
        (axes[0, 1], p.alpha[index], "α (concentration)", "viridis", None),
        (axes[0, 2], p.beta[index], "β (concentration)", "viridis", None),
        (axes[1, 0], p.mean[index], "mean mask α/(α+β)", "magma", (0, 1)),
        (axes[1, 1], pix, what, "magma", (0, 1)),
        (axes[1, 2], _display(masked, like=p.image[index]), "masked image (same grey scale)", "gray", None),
    ]
    for ax, img, title, cmap, lim in panels:
        _panel(ax, img, title, cmap, lim, fontsize=10)
    fig.suptitle(f"epoch {epoch}, image {index}")
    return fig


def class_figure(data: NoiseMasks, epoch: int):
    means = data.class_means(epoch)
    n = len(means)
    fig, axes = C.figure(min(2.4 * n + 1.0, 14.0), 2.8, ncols=n)
    axes = np.atleast_1d(axes)
    for ax, (lab, m) in zip(axes, means.items()):
        im = ax.imshow(m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        count = int((data.panel(epoch).label == lab).sum())
        ax.set_title(f"class {lab} (n={count})\nmean {m.mean():.3f}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes), fraction=0.03)
    fig.suptitle(f"per-class average mean mask α/(α+β), epoch {epoch}")
    return fig


def accuracy_figure(data: NoiseMasks):
    from matplotlib.ticker import MaxNLocator

    acc = data.accuracy()
    if acc is None:
        return C.empty_figure("no accuracy columns in metrics.csv (or no metrics.csv)")
    fig, ax = C.figure(7.0, 3.4)
    for c in acc.columns:
        s = acc[c].dropna()
        ax.plot(s.index, s.to_numpy(), marker=".", label=c)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=acc.index.name, ylabel="accuracy", title="classifier accuracy (metrics.csv)")
    ax.legend(fontsize=8)
    return fig


def policy_figure(data: NoiseMasks):
    """Per-epoch mask statistics (the module's ``mask_stats`` table): entropy and class/modality η²."""
    t = data.mask_stats
    if t is None or t.empty:
        return C.empty_figure("no mask_stats table in this run folder (written by NoiseMaskPretrain each epoch)")
    t = t.sort_values("epoch")
    fig, axes = C.figure(10.5, 3.2, ncols=2)
    axes[0].plot(t["epoch"], t["mask_entropy"], marker="o")
    axes[0].set(xlabel="epoch", ylabel="mean Beta entropy (nats)", title="Beta entropy (0 = uniform)")
    for by in ("class", "modality"):
        if f"mask_{by}_eta2" in t:
            axes[1].plot(t["epoch"], t[f"mask_{by}_eta2"], marker="o", label=f"by {by}")
    axes[1].set(xlabel="epoch", ylabel="η² of E[m]", title="share of mask variance between groups")
    axes[1].legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def policy_markdown(data: NoiseMasks) -> str:
    t = data.mask_stats
    if t is None or t.empty:
        return "_No per-epoch mask statistics in this run folder._"
    last = t.sort_values("epoch").iloc[-1]
    parts = [f"**What the policy learned** (epoch {int(last['epoch'])}, {len(t)} epochs logged): "
             f"Beta entropy **{C.fmt(last['mask_entropy'])}**"]
    for by in ("class", "modality"):
        if f"mask_{by}_eta2" in t and not pd.isna(last.get(f"mask_{by}_eta2")):
            parts.append(f"η² by {by} **{C.fmt(last[f'mask_{by}_eta2'])}** (permutation p = "
                         f"**{C.fmt(last[f'mask_{by}_p'])}**)")
    return " · ".join(parts)


def dependence_markdown(data: NoiseMasks, epoch: int, seed: int) -> str:
    d = data.image_dependence(epoch, seed)
    verdict = ("masks of different images differ more than two draws for one image"
               if d["different images"] > d["same image"] else
               "two draws for one image differ as much as masks of different images: the draw noise dominates")
    return (f"**Do masks depend on the image?** (epoch {epoch}, draws with seeds {seed} and {seed + 1}; RMS "
            f"distance between grid masks) same image **{C.fmt(d['same image'])}** · different images "
            f"**{C.fmt(d['different images'])}** · same class **{C.fmt(d['same class'])}** · different class "
            f"**{C.fmt(d['different class'])}** — {verdict}.")


def compare_markdown(data: NoiseMasks, epoch: int, a: int, b: int) -> str:
    """The two compared images' numbers: mean α, β and E[m] = α/(α+β) each, and how far apart their maps are."""
    p = data.panel(epoch)

    def rms(x, y) -> float:
        return float(np.sqrt(np.mean((np.asarray(x, np.float64) - np.asarray(y, np.float64)) ** 2)))

    parts = [f"image {i} (label {p.label[i]}): mean α **{C.fmt(p.alpha[i].mean())}**, mean β "
             f"**{C.fmt(p.beta[i].mean())}**, mean α/(α+β) **{C.fmt(p.mean[i].mean())}**" for i in (a, b)]
    return (f"**Image {a} vs image {b}** (epoch {epoch}) · " + " · ".join(parts) + f" · RMS difference: α "
            f"**{C.fmt(rms(p.alpha[a], p.alpha[b]))}**, β **{C.fmt(rms(p.beta[a], p.beta[b]))}**, α/(α+β) "
            f"**{C.fmt(rms(p.mean[a], p.mean[b]))}** (0: the policy gave both images the same mask).")


def compare_figure(data: NoiseMasks, epoch: int, a: int, b: int):
    """α, β and E[m] of two panel images side by side (shared colour scales)."""
    p = data.panel(epoch)
    fig, axes = C.figure(10.5, 5.4, ncols=4, nrows=2)
    lim_ab = (min(p.alpha[[a, b]].min(), p.beta[[a, b]].min()), max(p.alpha[[a, b]].max(), p.beta[[a, b]].max()))
    for row, i in enumerate((a, b)):
        items = [(_display(p.image[i]), f"image {i} (label {p.label[i]})", "gray", None),
                 (p.alpha[i], "α", "viridis", lim_ab), (p.beta[i], "β", "viridis", lim_ab),
                 (p.mean[i], "α/(α+β)", "magma", (0, 1))]
        for ax, (img, title, cmap, lim) in zip(axes[row], items):
            _panel(ax, img, title, cmap, lim, fontsize=9)
    fig.suptitle(f"epoch {epoch}: image {a} vs image {b}")
    return fig


def stats_markdown(data: NoiseMasks, epoch: int, index: int, mode: str, seed: int, sigma: float, kernel: int):
    p = data.panel(epoch)
    pred = "" if p.pred is None else f" · predicted **{p.pred[index]}**"
    lines = [f"**epoch {epoch}, image {index}** · label **{p.label[index]}**{pred} · "
             f"mean α = **{C.fmt(p.alpha[index].mean())}** · mean β = **{C.fmt(p.beta[index].mean())}** · "
             f"mean of α/(α+β) = **{C.fmt(p.mean[index].mean())}**"]
    if mode == SAMPLED or p.mask is None:
        grid, pix, _ = data.sample(epoch, index, seed, sigma, kernel)
        lines.append(f"sampled with seed **{seed}** (blur σ {sigma:g}, kernel {kernel}): grid mask mean = "
                     f"**{C.fmt(grid.mean())}**, pixel mask mean = **{C.fmt(pix.mean())}**")
    else:
        lines.append(f"mask saved by the run: pixel mask mean = **{C.fmt(p.mask[index].mean())}**")
    if p.log_space:
        lines.append("_α/β maps held values ≤ 0, so they were read as log-concentrations and exponentiated._")
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------------- app
def build_app(run_dir):
    return C.guarded(TITLE, lambda: _build(NoiseMasks(run_dir)))


def _header(data: NoiseMasks) -> str:
    return (f"# {TITLE}\n`{html.escape(str(data.run.path))}` · epochs with panels: "
            f"{', '.join(map(str, data.epochs))} · {len(data.panel(data.epochs[-1]))} images"
            + ("" if data.metrics is not None else " · (no metrics.csv: no accuracy curve)"))


def _choices(data: NoiseMasks, epoch: int) -> tuple[list[str], list[str]]:
    """The class and predicted-class filter choices of an epoch's panel."""
    t = data.image_table(epoch)
    labels = [C.ANY, *sorted({str(v) for v in t["label"]})]
    preds = [C.ANY] + ([] if t["pred"].isna().all() else sorted({str(v) for v in t["pred"]}))
    return labels, preds


def _build(data: NoiseMasks):
    import gradio as gr

    # torch + MONAI take seconds to import: start now in the background so the page is up at once and
    # "Resample" is ready when first pressed (the import lock makes the later import wait, not race)
    threading.Thread(target=importlib.import_module, args=("pfkit.noise.mask",), daemon=True).start()

    runs = C.Runs(data, NoiseMasks)
    home, get = runs.home, runs.get
    e0 = data.epochs[-1]
    p0 = data.panel(e0)
    mode0 = SAVED if p0.mask is not None else SAMPLED
    labels0, preds0 = _choices(data, e0)
    found0 = data.find(e0, ImageQuery())
    with gr.Blocks(title=TITLE) as demo:
        run_state = gr.State(home)
        # the default view's text is in the page itself (usable without an event round trip); the load
        # event fills the view only when the URL names another one (?run=&epoch=&image=)
        header = gr.Markdown(_header(data), elem_id="header")
        with gr.Row():
            epoch = gr.Dropdown(choices=data.epochs, value=e0, label="epoch", elem_id="epoch")
            index = gr.Slider(0, len(p0) - 1, value=0, step=1, label="image", elem_id="image")
            mode = gr.Radio([SAVED, SAMPLED], value=mode0, label="mask", elem_id="mode")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed (the run's panel seed, default 0, redraws its mask)",
                             minimum=0, elem_id="seed")
            sigma = gr.Number(value=data.sigma, label="blur σ (px)", minimum=0.01, elem_id="sigma")
            kernel = gr.Number(value=data.kernel, precision=0, label="blur kernel (odd)", minimum=1, elem_id="kernel")
            resample = gr.Button("Resample with seed", elem_id="resample")
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
            share = gr.Markdown(runs.link(home, epoch=e0, image=0), elem_id="share")
        stats = gr.Markdown(stats_markdown(data, e0, 0, mode0, 0, data.sigma, data.kernel)
                            if mode0 == SAVED else "", elem_id="stats")
        view0 = (home, e0, 0, mode0, 0, data.sigma, data.kernel) if mode0 == SAVED else None
        fig = gr.Plot(panel_figure(data, *view0[1:]) if mode0 == SAVED else None,
                      label="image, α, β, mean mask, mask, masked image", elem_id="panel")

        with gr.Accordion("Find images (this epoch's panel)", open=True):
            with gr.Row():
                f_label = gr.Dropdown(choices=labels0, value=C.ANY, label="class (label)", elem_id="f-label")
                f_pred = gr.Dropdown(choices=preds0, value=C.ANY, label="predicted", elem_id="f-pred")
                f_correct = gr.Radio([C.ANY, CORRECT, WRONG], value=C.ANY, label="prediction", elem_id="f-correct")
            with gr.Row():
                f_mmin = gr.Textbox(label="mean mask α/(α+β) min", placeholder="no bound", elem_id="f-mmin")
                f_mmax = gr.Textbox(label="mean mask max", placeholder="no bound", elem_id="f-mmax")
                f_smin = gr.Textbox(label="mask sd min", placeholder="no bound", elem_id="f-smin")
                f_smax = gr.Textbox(label="mask sd max", placeholder="no bound", elem_id="f-smax")
            find_btn, download, found_md, found_df, found_ids = C.results_block(
                "Find", "find", C.csv_file(found0, f"pfkit-noisemask-epoch{e0}"), found_markdown(found0, len(p0), e0),
                found_table(found0), found0["image"].astype(int).tolist()[:SHOWN], table_id="found-table",
                label="matching images (select a row to open it)", max_height=320)

        classes = gr.Plot(label="per-class average masks", elem_id="classes")
        acc = gr.Plot(label="accuracy over epochs", elem_id="accuracy")
        gr.Markdown("## What the policy learned")
        policy_md = gr.Markdown(value=policy_markdown(data), elem_id="policy")
        policy_fig = gr.Plot(label="mask statistics over epochs", elem_id="policy_curves")
        with gr.Row():
            img_a = gr.Number(value=0, precision=0, minimum=0, label="compare image A", elem_id="img_a")
            img_b = gr.Number(value=min(1, len(p0) - 1), precision=0, minimum=0, label="with image B", elem_id="img_b")
        dependence = gr.Markdown(elem_id="dependence")
        dependence_table = gr.Dataframe(label="RMS mask distance per class (same image: two draws for one image)",
                                        interactive=False, elem_id="dependence-table", max_height=300)
        compare_md = gr.Markdown(elem_id="compare-info")
        compare = gr.Plot(label="α/β maps of two images", elem_id="compare")

        def show_compare(run_v, e, a, b, s):
            d = get(run_v)
            if e is None or int(e) not in d.epochs:
                return (gr.skip(),) * len(cmp_out)
            n = len(d.panel(e))
            a, b = (min(max(int(v or 0), 0), n - 1) for v in (a, b))
            return (dependence_markdown(d, int(e), int(s or 0)), d.image_dependence_by_class(int(e), int(s or 0)),
                    compare_markdown(d, int(e), a, b), compare_figure(d, int(e), a, b))

        def show(run_v, e, i, m, s, sg, k):
            d = get(run_v)
            if e is None or int(e) not in d.epochs:
                return gr.skip(), gr.skip(), gr.skip()
            i = min(int(i or 0), len(d.panel(e)) - 1)
            s, k = int(s or 0), int(k or 1)
            if k % 2 == 0:
                k += 1  # the blur needs an odd kernel; say nothing, the stats line shows what was used
            sg = float(sg) if sg and sg > 0 else DEFAULT_SIGMA
            return (stats_markdown(d, int(e), i, m, s, sg, k), panel_figure(d, int(e), i, m, s, sg, k),
                    runs.link(run_v, epoch=int(e), image=i))

        def show_after_url(*v):  # the page holds the default view already
            return (gr.skip(),) * 3 if tuple(v) == view0 else show(*v)

        def on_epoch(run_v, e):
            d = get(run_v)
            if e is None or int(e) not in d.epochs:
                return gr.skip(), gr.skip()
            n = len(d.panel(e))
            return gr.Slider(0, n - 1, step=1), class_figure(d, int(e))

        def show_if_sampled(run_v, e, i, m, s, sg, k):  # seed and blur only matter for a drawn mask
            return show(run_v, e, i, m, s, sg, k) if m == SAMPLED else (gr.skip(),) * 3

        def on_find(run_v, e, label, pred, correct, mmin, mmax, smin, smax):
            d = get(run_v)
            if e is None or int(e) not in d.epochs:
                return (gr.skip(),) * 6
            labels, preds = _choices(d, int(e))
            label = label if label in labels else C.ANY
            pred = pred if pred in preds else C.ANY
            try:
                found = d.find(int(e), ImageQuery(label, pred, correct, (mmin, mmax), (smin, smax)))
            except C.BadQuery as err:
                return f"**Not found:** {err}", gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return (*C.results_update(found_markdown(found, len(d.panel(e)), int(e)), found_table(found), found,
                                      f"pfkit-noisemask-epoch{int(e)}", found["image"].astype(int).tolist()[:SHOWN]),
                    gr.Dropdown(choices=labels, value=label),
                    gr.Dropdown(choices=preds, value=pred))

        def on_pick(ids, evt: gr.SelectData):
            key = C.picked(evt, ids)
            return gr.skip() if key is None else int(key)

        def first_view(request: gr.Request):
            """The view the URL names; nothing to send for the default view (the page already holds it)."""
            p = C.query_params(request)
            run_v, msg = runs.open(p.get("run", ""))
            d = get(run_v)
            if run_v == home and not msg and not ({"epoch", "image"} & set(p)) and d.epochs[-1] == e0:
                return (gr.skip(),) * 5
            e = C.int_param(p, "epoch", d.epochs, d.epochs[-1])
            n = len(d.panel(e))
            i = C.int_param(p, "image", range(n), 0)
            return (run_v, _header(d), msg, gr.Dropdown(choices=d.epochs, value=e),
                    gr.Slider(0, n - 1, value=i, step=1))

        first_view.__annotations__["request"] = gr.Request  # string annotations: give Gradio the class
        on_pick.__annotations__["evt"] = gr.SelectData

        def on_reload(run_v):
            d = get(run_v)
            msg = C.reload(d) or (f"Reloaded at {time.strftime('%H:%M:%S')}: epochs "
                                  f"{', '.join(map(str, d.epochs))}.")
            return (gr.Dropdown(choices=d.epochs, value=d.epochs[-1]), accuracy_figure(d), msg,
                    policy_markdown(d), policy_figure(d))

        def run_wide(run_v):
            d = get(run_v)
            return accuracy_figure(d), policy_markdown(d), policy_figure(d)

        inputs = [run_state, epoch, index, mode, seed, sigma, kernel]
        shown = [stats, fig, share]
        f_in = [run_state, epoch, f_label, f_pred, f_correct, f_mmin, f_mmax, f_smin, f_smax]
        f_out = [found_md, found_df, download, found_ids, f_label, f_pred]
        cmp_in = [run_state, epoch, img_a, img_b, seed]
        cmp_out = [dependence, dependence_table, compare_md, compare]
        gr.on([epoch.change, index.change, mode.input], show, inputs, shown, trigger_mode=C.LATEST)
        gr.on([seed.change, sigma.change, kernel.change], show_if_sampled, inputs, shown, trigger_mode=C.LATEST)
        gr.on([epoch.change], on_epoch, [run_state, epoch], [index, classes], trigger_mode=C.LATEST)
        gr.on([epoch.change, find_btn.click, f_label.input, f_pred.input, f_correct.input], on_find, f_in, f_out,
              trigger_mode=C.LATEST)
        found_df.select(on_pick, found_ids, index)
        gr.on([epoch.change, img_a.change, img_b.change, seed.change], show_compare, cmp_in, cmp_out,
              trigger_mode=C.LATEST)
        # first view: what the URL names, then the image panel, then the rest (figures take longest)
        (demo.load(first_view, None, [run_state, header, status, epoch, index])
         .then(show_after_url, inputs, shown).then(on_epoch, [run_state, epoch], [index, classes])
         .then(run_wide, run_state, [acc, policy_md, policy_fig]).then(on_find, f_in, f_out)
         .then(show_compare, cmp_in, cmp_out))
        (reload_btn.click(on_reload, run_state, [epoch, acc, status, policy_md, policy_fig])
         .then(on_epoch, [run_state, epoch], [index, classes]).then(show, inputs, shown))
        resample.click(lambda *v: (SAMPLED, *show(*v[:3], SAMPLED, *v[4:])), inputs, [mode, *shown])
    return demo


def add_arguments(parser):
    C.add_arguments(parser, "masks/epoch_XXX.npz (a noise-mask run)")


def main(args):
    return C.launch(build_app(args.run_dir), args)


def _panel(ax, img, title: str, cmap: str, lim, fontsize: int) -> None:
    """One map without ticks; every map but the grey image gets a colour bar."""
    im = ax.imshow(img, cmap=cmap, vmin=None if lim is None else lim[0], vmax=None if lim is None else lim[1],
                   interpolation="nearest")
    ax.set_title(title, fontsize=fontsize)
    ax.set_xticks([])
    ax.set_yticks([])
    if cmap != "gray":
        ax.figure.colorbar(im, ax=ax, fraction=0.046)
