"""VADE difficulty inspector: ``pfkit inspect difficulty RUN_DIR``.

Reads ``difficulty.parquet`` (step, prompt_id, alpha, beta, p_mean, selected, successes, trials,
sampler; one row per training prompt per step, see ``pfkit.data.samplers.difficulty_rows``) and, when
present, ``rollouts.parquet``. Shows the Beta posteriors of chosen prompts, their alpha/beta/mean
trajectories, how often each prompt was selected against its estimated success probability (VADE's
information-gain criterion should favour p near 0.5), the fraction of zero-variance groups per step for
every sampler in the run, and a prompt table sortable by difficulty and uncertainty.

What VADE decided at a step: the information-gain curve I(p) = p(1 - p)^2 (the paper's score) with each
candidate's Thompson draw on it, the selected ones ringed (``draw`` column, logged by every selecting
sampler; a run without it shows posterior means), and the effective-gradient ratio per sampler: the share
of the trained groups with mixed rewards per step (the paper's Fig. 3).

Zero-variance groups (all G rewards equal, so the group-relative advantage is 0 and the group teaches
nothing) are counted two ways: over the groups the sampler *generated* (difficulty.parquet:
``trials > 0`` and ``successes`` in {0, trials}; exact for 0/1 rewards) and over the groups *logged* to
rollouts.parquet (all rewards of a (step, prompt) equal; any reward scale). A filtering sampler drops
zero-variance groups after generating them, so only the first count shows what it paid for.
"""

from __future__ import annotations

import html
import time

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C

TITLE = "VADE difficulty inspector"
COLUMNS = ["step", "prompt_id", "alpha", "beta", "p_mean", "selected", "successes", "trials", "sampler"]
SORTS = {
    "hardest first (lowest p)": ("p_mean", True),
    "easiest first (highest p)": ("p_mean", False),
    "most uncertain first (posterior sd)": ("sd", False),
    "most selected first": ("times_selected", False),
    "closest to p = 0.5 first": ("dist_half", True),
}
MAX_PROMPTS_PLOTTED = 12


def posterior_sd(alpha, beta):
    a, b = np.asarray(alpha, np.float64), np.asarray(beta, np.float64)
    return np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


class Difficulty:
    """The difficulty table (and rollouts if logged) of one run."""

    def __init__(self, run_dir):
        self.run, df = C.load_table(run_dir, "difficulty", COLUMNS)
        df = df.copy()
        df["pid"] = df["prompt_id"].astype(str)
        df["sampler"] = df["sampler"].astype(str)
        df["selected"] = df["selected"].astype(bool)
        for c in ("alpha", "beta", "p_mean", "successes", "trials"):
            df[c] = df[c].astype(np.float64)
        # every row with trials > 0 is a generated group (zero-variance counts use them all); the posterior
        # views keep one row of a (sampler, step, prompt) logged more than once (part files of one step
        # carry no write order, so which one is arbitrary), and the page says so
        self.raw = df
        dup = df.duplicated(["sampler", "step", "pid"], keep="last")
        self.repeated = int(dup.sum())
        self.df = df[~dup].sort_values(["sampler", "step", "pid"], kind="stable").reset_index(drop=True)
        self.samplers = sorted(self.df["sampler"].unique())
        self.rollouts = None
        self._zero = None
        if self.run.has_table("rollouts"):
            ro = self.run.read("rollouts")
            if {"step", "prompt_id", "reward"} <= set(ro.columns) and not ro.empty:
                self.rollouts = ro

    def of(self, sampler: str) -> pd.DataFrame:
        return self.df[self.df["sampler"] == sampler]

    def steps(self, sampler: str) -> list[int]:
        return sorted(int(s) for s in self.of(sampler)["step"].unique())

    def at(self, sampler: str, step: int) -> pd.DataFrame:
        d = self.of(sampler)
        return d[d["step"] == int(step)]

    def default_prompts(self, sampler: str, step: int, k: int = 5) -> list[str]:
        """The prompts selected at ``step`` (else the most uncertain), at most k."""
        d = self.at(sampler, step)
        sel = d.loc[d["selected"], "pid"].tolist()
        if not sel:
            sel = d.assign(sd=posterior_sd(d["alpha"], d["beta"])).nlargest(k, "sd")["pid"].tolist()
        return sel[:k]

    # ----------------------------------------------------------------- tables
    def prompt_table(self, sampler: str, step: int, sort: str) -> pd.DataFrame:
        """Posterior at ``step`` plus selection history up to it, sorted by ``SORTS[sort]``."""
        d = self.of(sampler)
        upto = d[d["step"] <= int(step)]
        hist = upto.groupby("pid").agg(times_selected=("selected", "sum"), trials=("trials", "sum"),
                                       successes=("successes", "sum"))
        now = self.at(sampler, step).set_index("pid")[["alpha", "beta", "p_mean"]]
        t = now.join(hist)
        t["sd"] = posterior_sd(t["alpha"], t["beta"])
        t["dist_half"] = (t["p_mean"] - 0.5).abs()
        t["observed_rate"] = np.where(t["trials"] > 0, t["successes"] / t["trials"].where(t["trials"] > 0), np.nan)
        col, asc = SORTS[sort]
        t = t.sort_values([col, "pid"] if col != "pid" else [col], ascending=[asc, True], kind="stable")
        t = t.reset_index().rename(columns={"pid": "prompt_id"})
        t["times_selected"] = t["times_selected"].astype(int)
        t = t[["prompt_id", "p_mean", "sd", "alpha", "beta", "times_selected", "trials", "observed_rate"]]
        return t.round(4)

    def zero_variance(self) -> pd.DataFrame:
        """Per (source, sampler, step): fraction of zero-variance groups (see module docstring). Cached."""
        if self._zero is None:
            self._zero = self._zero_variance()
        return self._zero

    def _zero_variance(self) -> pd.DataFrame:
        d = self.raw[self.raw["trials"] > 0]
        zv = (d["successes"] <= 1e-9) | (d["successes"] >= d["trials"] - 1e-9)
        gen = (d.assign(zero=zv).groupby(["sampler", "step"], as_index=False)
               .agg(fraction=("zero", "mean"), groups=("zero", "size")))
        gen["source"] = "generated (difficulty)"
        frames = [gen]
        if self.rollouts is not None:
            ro = self.rollouts
            if "sampler" in ro.columns:
                key = ro["sampler"].astype(str)
            elif len(self.samplers) == 1:
                key = pd.Series(self.samplers[0], index=ro.index)
            else:
                key = None  # several samplers, rollouts not labelled: cannot attribute groups
            if key is not None:
                g = (ro.assign(sampler=key).groupby(["sampler", "step", "prompt_id"])["reward"]
                     .agg(lambda r: float(np.ptp(r.to_numpy(np.float64))) <= 1e-9).rename("zero").reset_index())
                log = g.groupby(["sampler", "step"], as_index=False).agg(fraction=("zero", "mean"),
                                                                         groups=("zero", "size"))
                log["source"] = "logged (rollouts)"
                frames.append(log)
        return pd.concat(frames, ignore_index=True)

    def effective_ratio(self) -> pd.DataFrame:
        """Per sampler and step: share of the selected (trained) groups whose rewards were mixed."""
        d = self.raw[self.raw["selected"] & (self.raw["trials"] > 0)]
        mixed = (d["successes"] > 0) & (d["successes"] < d["trials"])
        return (d.assign(mixed=mixed).groupby(["sampler", "step"], as_index=False)
                .agg(ratio=("mixed", "mean"), groups=("mixed", "size")))

    def selection(self, sampler: str) -> pd.DataFrame:
        """Per prompt: times selected and mean p_mean over the steps (the estimate it was chosen on)."""
        d = self.of(sampler)
        return d.groupby("pid", as_index=False).agg(times_selected=("selected", "sum"), p_mean=("p_mean", "mean"))


# ------------------------------------------------------------------------------------------- figures
def posterior_figure(data: Difficulty, sampler: str, step: int, prompts: list[str]):
    from scipy.stats import beta as beta_dist

    d = data.at(sampler, step).set_index("pid")
    prompts = [p for p in prompts if p in d.index][:MAX_PROMPTS_PLOTTED]
    if not prompts:
        return C.empty_figure("choose prompts to plot their Beta posteriors")
    fig, ax = C.figure(6.0, 4.0)
    x = np.linspace(0.001, 0.999, 400)
    for p in prompts:
        a, b = d.at[p, "alpha"], d.at[p, "beta"]
        ax.plot(x, beta_dist.pdf(x, a, b), label=f"{p}: Beta({a:.2f}, {b:.2f})")
    ax.axvline(0.5, color="k", lw=0.7, ls=":")
    ax.set(xlabel="success probability p", ylabel="posterior density", title=f"{sampler}, step {step}")
    ax.legend(fontsize=7)
    return fig


def trajectory_figure(data: Difficulty, sampler: str, prompts: list[str], current: int | None):
    from matplotlib.ticker import MaxNLocator

    d = data.of(sampler)
    d = d[d["pid"].isin(prompts[:MAX_PROMPTS_PLOTTED])]
    if d.empty:
        return C.empty_figure("choose prompts to plot their trajectories")
    fig, axes = C.figure(11.0, 3.2, ncols=3)
    for p, g in d.groupby("pid", sort=False):
        for ax, col in zip(axes, ("alpha", "beta", "p_mean")):
            line, = ax.plot(g["step"], g[col], label=p, lw=1.2)
            sel = g[g["selected"]]
            ax.plot(sel["step"], sel[col], "o", ms=3, color=line.get_color())
    for ax, title in zip(axes, ("α", "β", "posterior mean α/(α+β)")):
        ax.set(xlabel="step", title=title + " (dots: selected)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if current is not None:
            ax.axvline(current, color="k", lw=0.7, alpha=0.4)
    axes[2].set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=7)
    return fig


def selection_figure(data: Difficulty, sampler: str):
    import seaborn as sns

    d = data.of(sampler)
    per = data.selection(sampler)
    fig, (a1, a2) = C.figure(10.0, 3.4, ncols=2)
    sns.scatterplot(data=per, x="p_mean", y="times_selected", ax=a1, s=25)
    a1.axvline(0.5, color="k", lw=0.7, ls=":")
    a1.set(xlabel="estimated p (mean over steps)", ylabel="times selected", xlim=(-0.02, 1.02),
           title=f"{sampler}: selections per prompt")
    bins = np.linspace(0, 1, 21)
    a2.hist(d["p_mean"], bins=bins, density=True, alpha=0.5, label="all candidates", color="gray")
    if d["selected"].any():
        a2.hist(d.loc[d["selected"], "p_mean"], bins=bins, density=True, alpha=0.6, label="selected",
                color="tab:blue")
    a2.axvline(0.5, color="k", lw=0.7, ls=":")
    a2.set(xlabel="estimated p at the step", ylabel="density", title="p of selected vs all (per step)")
    a2.legend(fontsize=8)
    return fig


def infogain_figure(data: Difficulty, sampler: str, step: int):
    """I(p) = p(1 - p)^2 with the step's draws (or posterior means) on it; selected prompts ringed."""
    d = data.at(sampler, step)
    has_draw = "draw" in d and d["draw"].notna().any()
    x = d["draw"] if has_draw else d["p_mean"]
    what = "Thompson draw p̃" if has_draw else "posterior mean (no draws logged)"
    fig, ax = C.figure(6.0, 4.0)
    p = np.linspace(0, 1, 201)
    ax.plot(p, p * (1 - p) ** 2, color="k", lw=1, label="I(p) = p(1−p)² (VADE)")
    ax.plot(p, p * (1 - p), color="gray", lw=0.8, ls="--", label="p(1−p) (ablation)")
    ok = x.notna()
    xs = x[ok].to_numpy(np.float64)
    ax.scatter(xs, xs * (1 - xs) ** 2, s=14, alpha=0.6, label=f"candidates ({what})")
    sel = d["selected"].to_numpy()[ok.to_numpy()]
    ax.scatter(xs[sel], (xs * (1 - xs) ** 2)[sel], s=70, facecolors="none", edgecolors="tab:red",
               label=f"selected ({int(sel.sum())})")
    ax.axvline(1 / 3, color="k", lw=0.6, ls=":")
    ax.set(xlabel=what, ylabel="information gain", title=f"{sampler}, step {step}: what was chosen")
    ax.legend(fontsize=7)
    return fig


def effective_ratio_figure(data: Difficulty):
    from matplotlib.ticker import MaxNLocator

    er = data.effective_ratio()
    fig, ax = C.figure(7.0, 3.4)
    for sampler, g in er.groupby("sampler", sort=True):
        ax.plot(g["step"], g["ratio"], marker=".", label=sampler)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="share of trained groups", ylim=(-0.02, 1.02),
           title="effective-gradient ratio (mixed-reward groups in the batch)")
    ax.legend(fontsize=7)
    return fig


def zero_variance_figure(data: Difficulty):
    from matplotlib.ticker import MaxNLocator

    zv = data.zero_variance()
    fig, ax = C.figure(7.0, 3.4)
    for (src, sampler), g in zv.groupby(["source", "sampler"], sort=True):
        ax.plot(g["step"], g["fraction"], marker=".", ls="-" if src.startswith("generated") else "--",
                label=f"{sampler} · {src}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="fraction of groups", ylim=(-0.02, 1.02),
           title="zero-variance groups (all rewards equal) per step")
    ax.legend(fontsize=7)
    return fig


def stats_markdown(data: Difficulty, sampler: str, step: int) -> str:
    d = data.of(sampler)
    sel = d[d["selected"]]
    lines = [f"**{sampler}**: {d['pid'].nunique()} prompts, {d['step'].nunique()} steps, {len(sel)} selections."]
    if len(sel):
        lines.append(f"Mean |p − 0.5| of selected prompts = **{C.fmt((sel['p_mean'] - 0.5).abs().mean())}** vs "
                     f"all candidates = **{C.fmt((d['p_mean'] - 0.5).abs().mean())}** (lower: closer to p ≈ 0.5).")
    zv = data.zero_variance()
    parts = []
    for (src, smp), g in zv.groupby(["source", "sampler"], sort=True):
        tot = g["fraction"].to_numpy() * g["groups"].to_numpy()
        at = g[g["step"] == int(step)]
        now = C.fmt(at["fraction"].iloc[0]) if len(at) else "n/a"
        parts.append(f"{smp} · {src}: **{C.fmt(tot.sum() / g['groups'].sum())}** overall, {now} at step {step}")
    lines.append("Zero-variance groups: " + "; ".join(parts) if parts else "No groups generated yet.")
    return "\n\n".join(lines)


# ------------------------------------------------------------------------------------------------- app
def build_app(run_dir):
    return C.guarded(TITLE, lambda: _build(Difficulty(run_dir)))


def _build(data: Difficulty):
    import gradio as gr
    import scipy.stats  # noqa: F401  (imported now, not on the first page view: the server starts ready)
    import seaborn  # noqa: F401

    s0 = next((s for s in data.samplers if s.startswith("vade")), data.samplers[0])  # the method of interest
    steps0 = data.steps(s0)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n`{html.escape(str(data.run.path))}` · samplers: {', '.join(data.samplers)}"
                    + ("" if data.rollouts is not None else " · (no rollouts.parquet: zero-variance from difficulty only)"))
        if data.repeated:
            gr.Markdown(C.warning(
                f"{data.repeated} rows repeat a (sampler, step, prompt_id) already logged: the run wrote the same "
                "step more than once (a reused run folder, or a step counter that did not advance). Posteriors "
                "show one of the repeated rows; zero-variance counts use every generated group."), elem_id="pfkit-warning")
        with gr.Row():
            sampler = gr.Dropdown(choices=data.samplers, value=s0, label="sampler", elem_id="sampler")
            step = gr.Dropdown(choices=steps0, value=steps0[-1], label="step", elem_id="step")
            prompts = gr.Dropdown(choices=sorted(data.of(s0)["pid"].unique()),
                                  value=data.default_prompts(s0, steps0[-1]), multiselect=True,
                                  label=f"prompts to plot (≤ {MAX_PROMPTS_PLOTTED})", elem_id="prompts")
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
        stats = gr.Markdown(elem_id="stats")
        with gr.Row():
            post = gr.Plot(label="Beta posteriors at the step", elem_id="posteriors")
            zero = gr.Plot(label="zero-variance groups", elem_id="zero-variance")
        with gr.Row():
            gain = gr.Plot(label="information gain of the step's draws", elem_id="infogain")
            eff = gr.Plot(label="effective-gradient ratio", elem_id="effective-ratio")
        traj = gr.Plot(label="α / β / mean over steps", elem_id="trajectories")
        sel = gr.Plot(label="selection vs estimated p", elem_id="selection")
        sort = gr.Radio(choices=list(SORTS), value=next(iter(SORTS)), label="sort prompts", elem_id="sort")
        table = gr.Dataframe(label="prompts at the step (sd = posterior standard deviation = uncertainty)",
                             interactive=False, elem_id="prompt-table")

        def on_sampler(s):
            st = data.steps(s)
            return (gr.Dropdown(choices=st, value=st[-1]),
                    gr.Dropdown(choices=sorted(data.of(s)["pid"].unique()), value=data.default_prompts(s, st[-1])))

        def views(s, st, ps):
            if s is None or st is None:
                return (gr.skip(),) * 7
            ps = list(ps or [])
            return (stats_markdown(data, s, int(st)), posterior_figure(data, s, int(st), ps),
                    trajectory_figure(data, s, ps, int(st)), selection_figure(data, s), zero_variance_figure(data),
                    infogain_figure(data, s, int(st)), effective_ratio_figure(data))

        def tab(s, st, srt):
            if s is None or st is None:
                return gr.skip()
            return data.prompt_table(s, int(st), srt)

        def on_reload(s):
            msg = C.reload(data)
            s = s if s in data.samplers else data.samplers[0]
            st = data.steps(s)
            msg = msg or f"Reloaded at {time.strftime('%H:%M:%S')}: {len(data.df)} rows, newest step {st[-1]}."
            return gr.Dropdown(choices=data.samplers, value=s), gr.Dropdown(choices=st, value=st[-1]), msg

        sampler.change(on_sampler, sampler, [step, prompts])
        (reload_btn.click(on_reload, sampler, [sampler, step, status])
         .then(views, [sampler, step, prompts], [stats, post, traj, sel, zero, gain, eff])
         .then(tab, [sampler, step, sort], table))
        gr.on([sampler.change, step.change, prompts.change, demo.load], views, [sampler, step, prompts],
              [stats, post, traj, sel, zero, gain, eff], trigger_mode=C.LATEST)
        gr.on([sampler.change, step.change, sort.change, demo.load], tab, [sampler, step, sort], table, trigger_mode=C.LATEST)
    return demo


def add_arguments(parser):
    C.add_arguments(parser, "difficulty.parquet (a GRPO run with a VADE/uniform/DAPO sampler)")


def main(args):
    return C.launch(build_app(args.run_dir), args)
