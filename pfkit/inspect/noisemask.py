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

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C

TITLE = "Noise-mask inspector"
REQUIRED = ("image", "alpha", "beta", "label")
DEFAULT_SIGMA, DEFAULT_KERNEL = 1.0, 5  # pfkit.noise.mask defaults; a run may override (npz or config.yaml)
SAVED, SAMPLED = "saved by the run", "sampled with seed"


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

    def image_dependence(self, epoch: int, seed: int) -> dict[str, float]:
        """RMS distance between grid masks: two draws for the same image vs draws for two different images
        (all pairs, pairs of the same class, pairs of different classes). If the policy's masks depend on
        the image, masks of different images are farther apart than two draws for one image."""
        a, b = self.draws(epoch, seed)
        lab = self.panel(epoch).label
        k = len(a)
        d = np.sqrt(((a[:, None] - b[None]) ** 2).reshape(k, k, -1).mean(-1))  # d[i, j]: draw 1 of i vs draw 2 of j
        off = ~np.eye(k, dtype=bool)
        same = (lab[:, None] == lab[None]) & off
        other = lab[:, None] != lab[None]
        return {"same image": float(np.diag(d).mean()), "different images": float(d[off].mean()) if k > 1 else np.nan,
                "same class": float(d[same].mean()) if same.any() else np.nan,
                "different class": float(d[other].mean()) if other.any() else np.nan}

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


def _build(data: NoiseMasks):
    import gradio as gr

    # torch + MONAI take seconds to import: start now in the background so the page is up at once and
    # "Resample" is ready when first pressed (the import lock makes the later import wait, not race)
    threading.Thread(target=importlib.import_module, args=("pfkit.noise.mask",), daemon=True).start()

    e0 = data.epochs[-1]
    p0 = data.panel(e0)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n`{html.escape(str(data.run.path))}` · epochs with panels: "
                    f"{', '.join(map(str, data.epochs))} · {len(p0)} images"
                    + ("" if data.metrics is not None else " · (no metrics.csv: no accuracy curve)"))
        with gr.Row():
            epoch = gr.Dropdown(choices=data.epochs, value=e0, label="epoch", elem_id="epoch")
            index = gr.Slider(0, len(p0) - 1, value=0, step=1, label="image", elem_id="image")
            mode = gr.Radio([SAVED, SAMPLED], value=SAVED if p0.mask is not None else SAMPLED, label="mask",
                            elem_id="mode")
        with gr.Row():
            seed = gr.Number(value=0, precision=0, label="seed (the run's panel seed, default 0, redraws its mask)",
                             minimum=0, elem_id="seed")
            sigma = gr.Number(value=data.sigma, label="blur σ (px)", minimum=0.01, elem_id="sigma")
            kernel = gr.Number(value=data.kernel, precision=0, label="blur kernel (odd)", minimum=1, elem_id="kernel")
            resample = gr.Button("Resample with seed", elem_id="resample")
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
        stats = gr.Markdown(elem_id="stats")
        fig = gr.Plot(label="image, α, β, mean mask, mask, masked image", elem_id="panel")
        classes = gr.Plot(label="per-class average masks", elem_id="classes")
        acc = gr.Plot(value=accuracy_figure(data), label="accuracy over epochs", elem_id="accuracy")
        gr.Markdown("## What the policy learned")
        policy_md = gr.Markdown(value=policy_markdown(data), elem_id="policy")
        policy_fig = gr.Plot(value=policy_figure(data), label="mask statistics over epochs", elem_id="policy_curves")
        with gr.Row():
            img_a = gr.Number(value=0, precision=0, minimum=0, label="compare image A", elem_id="img_a")
            img_b = gr.Number(value=min(1, len(p0) - 1), precision=0, minimum=0, label="with image B", elem_id="img_b")
        dependence = gr.Markdown(elem_id="dependence")
        compare = gr.Plot(label="α/β maps of two images", elem_id="compare")

        def show_compare(e, a, b, s):
            if e is None:
                return gr.skip(), gr.skip()
            n = len(data.panel(e))
            a, b = (min(max(int(v or 0), 0), n - 1) for v in (a, b))
            return dependence_markdown(data, int(e), int(s or 0)), compare_figure(data, int(e), a, b)

        def show(e, i, m, s, sg, k):
            if e is None:
                return gr.skip(), gr.skip()
            i = min(int(i or 0), len(data.panel(e)) - 1)
            s, k = int(s or 0), int(k or 1)
            if k % 2 == 0:
                k += 1  # the blur needs an odd kernel; say nothing, the stats line shows what was used
            sg = float(sg) if sg and sg > 0 else DEFAULT_SIGMA
            return (stats_markdown(data, int(e), i, m, s, sg, k), panel_figure(data, int(e), i, m, s, sg, k))

        def on_epoch(e):
            n = len(data.panel(e))
            return gr.Slider(0, n - 1, step=1), class_figure(data, int(e))

        def show_if_sampled(e, i, m, s, sg, k):  # seed and blur only matter for a drawn mask
            return show(e, i, m, s, sg, k) if m == SAMPLED else (gr.skip(), gr.skip())

        def on_reload():
            msg = C.reload(data) or (f"Reloaded at {time.strftime('%H:%M:%S')}: epochs "
                                     f"{', '.join(map(str, data.epochs))}.")
            return (gr.Dropdown(choices=data.epochs, value=data.epochs[-1]), accuracy_figure(data), msg,
                    policy_markdown(data), policy_figure(data))

        inputs = [epoch, index, mode, seed, sigma, kernel]
        gr.on([epoch.change, index.change, mode.input, demo.load], show, inputs, [stats, fig], trigger_mode=C.LATEST)
        gr.on([seed.change, sigma.change, kernel.change], show_if_sampled, inputs, [stats, fig], trigger_mode=C.LATEST)
        gr.on([epoch.change, demo.load], on_epoch, epoch, [index, classes], trigger_mode=C.LATEST)
        gr.on([epoch.change, img_a.change, img_b.change, seed.change, demo.load], show_compare,
              [epoch, img_a, img_b, seed], [dependence, compare], trigger_mode=C.LATEST)
        (reload_btn.click(on_reload, None, [epoch, acc, status, policy_md, policy_fig]).then(on_epoch, epoch, [index, classes])
         .then(show, inputs, [stats, fig]))
        resample.click(lambda *v: (SAMPLED, *show(*v[:2], SAMPLED, *v[3:])), inputs, [mode, stats, fig])
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
