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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C
from pfkit.inspect.filtration import CLEAN, FAILED, FIELDS, FLAGGED, PASSED, TOKEN_MODES, row_token_view

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


PASS_AT = 1.0 - 1e-9  # a rollout "passes" when its unit-test score is 1 (NaN: no tests)
CSV_COLUMNS = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "passed", "hack", "sampler"]
CSV_NAME = "pfkit-difficulty-rollouts"


def _index_rollouts(ro: pd.DataFrame) -> pd.DataFrame:
    """rollouts.parquet with the columns the search and the prompt view use (missing text columns empty)."""
    ro = ro.copy()
    ro["pid"] = ro["prompt_id"].astype(str)
    if "sample_idx" not in ro.columns:
        ro["sample_idx"] = ro.groupby(["step", "pid"]).cumcount()
    for c in ("prompt", "response"):
        ro[c] = ro[c].fillna("").astype(str) if c in ro.columns else ""
    ro["reward"] = ro["reward"].astype(np.float64)
    ro["score"] = ro["score"].astype(np.float64) if "score" in ro.columns else np.nan
    ro["passed"] = ro["score"].to_numpy() >= PASS_AT
    if "hack" in ro.columns:
        ro["hack"] = ro["hack"].fillna("").astype(str)
    return ro.sort_values(["step", "pid", "sample_idx"], kind="stable").reset_index(drop=True)


@dataclass(frozen=True)
class Query:
    """A search over every logged rollout. ``reward`` is (min, max), None = open; flags are ANY or a value."""

    text: str = ""
    regex: bool = False
    fields: str = "prompt and response"
    reward: tuple = (None, None)
    passed: str = C.ANY
    hack: str = C.ANY
    score: tuple = (None, None)  # the unit-test score (NaN where the task has none: no row matches a bound)


def results_table(found: pd.DataFrame, limit: int = C.SHOWN) -> pd.DataFrame:
    """The search results as listed (first ``limit``): one row per rollout with a response excerpt."""
    return C.results_table(found, limit=limit)


def csv_frame(found: pd.DataFrame) -> pd.DataFrame:
    """What "download as CSV" writes: every matching rollout with its text and numbers (no token lists)."""
    return C.csv_frame(found, CSV_COLUMNS)


def _search_parts(found: pd.DataFrame) -> list[str]:
    return [f"{found['step'].nunique()} steps, {found['pid'].nunique()} prompts",
            f"mean reward **{C.fmt(found['reward'].mean())}**", f"passed **{int(found['passed'].sum())}**"]


def search_markdown(found: pd.DataFrame, total: int) -> str:
    return C.search_markdown(found, total, "rollouts", _search_parts, "Select a row to open that prompt at that step.")


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
        self.ro = None  # the rollouts indexed for search and the prompt view (None: none logged)
        if self.run.has_table("rollouts"):
            ro = self.run.read("rollouts")
            if {"step", "prompt_id", "reward"} <= set(ro.columns) and not ro.empty:
                self.rollouts = ro
                self.ro = _index_rollouts(ro)
        self.has_hack = self.ro is not None and "hack" in self.ro.columns
        self.has_tokens = self.ro is not None and {"tokens", "token_logprobs"} <= set(self.ro.columns)
        self.has_ref = self.has_tokens and "ref_token_logprobs" in self.ro.columns
        self.config = _read_config(self.run.config_path)
        self.images = _image_paths(self.raw, self.ro)  # prompt id -> its image path (image-and-text prompts)
        self.has_images = bool(self.images)
        self.plots = C.PlotCache()  # figures as sent, per (figure, arguments); a reload starts a fresh one

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

    # ----------------------------------------------------------------- rollouts: search, one prompt
    def search(self, q: Query) -> pd.DataFrame:
        """The logged rollouts (all steps) matching ``q``; raises C.BadQuery for a query that cannot run."""
        if self.ro is None:
            raise C.BadQuery("this run logged no rollouts (no rollouts.parquet): nothing to search")
        df = self.ro
        if q.fields not in FIELDS:
            raise C.BadQuery(f"search field must be one of {', '.join(FIELDS)}, got {q.fields!r}")
        m = C.text_mask(df, FIELDS[q.fields], q.text, regex=q.regex)
        m &= C.range_mask(df["reward"], *q.reward, name="reward")
        m &= C.range_mask(df["score"], *q.score, name="score")
        m &= C.flag_mask(df["passed"], q.passed, PASSED, FAILED)
        if q.hack not in (None, "", C.ANY):
            if not self.has_hack:
                raise C.BadQuery("this run logs no reward-hack flag (rollouts.parquet has no 'hack' column)")
            m &= C.flag_mask(df["hack"] != "", q.hack, FLAGGED, CLEAN)
        return df[m]

    def rollouts_of(self, pid: str, sampler: str | None = None) -> pd.DataFrame:
        """Every logged rollout of prompt ``pid`` (of ``sampler`` when the rollouts name theirs)."""
        if self.ro is None:
            return pd.DataFrame(columns=["step", "pid", "sample_idx", "reward", "score", "passed"])
        r = self.ro[self.ro["pid"] == str(pid)]
        if sampler is not None and "sampler" in r.columns:
            r = r[r["sampler"].astype(str) == sampler]
        return r

    def history(self, sampler: str, pid: str) -> pd.DataFrame:
        """Prompt ``pid``'s posterior per step: alpha, beta, mean, sd, the 95% central credible interval
        (``scipy.special.betaincinv``, what ``scipy.stats.beta.ppf`` computes, without importing
        scipy.stats before the first page), selected, and the group's successes / trials at that step."""
        from scipy.special import betaincinv

        d = self.of(sampler)
        h = d[d["pid"] == str(pid)][["step", "alpha", "beta", "p_mean", "selected", "successes", "trials"]].copy()
        h["sd"] = posterior_sd(h["alpha"], h["beta"])
        h["ci_low"] = betaincinv(h["alpha"], h["beta"], 0.025)
        h["ci_high"] = betaincinv(h["alpha"], h["beta"], 0.975)
        return h.reset_index(drop=True)

    def selection(self, sampler: str) -> pd.DataFrame:
        """Per prompt: times selected and mean p_mean over the steps (the estimate it was chosen on)."""
        d = self.of(sampler)
        return d.groupby("pid", as_index=False).agg(times_selected=("selected", "sum"), p_mean=("p_mean", "mean"))


# ------------------------------------------------------------------------------------------- decisions
SCORING = {  # criterion -> how the page writes the curve (the values come from pfkit.rl.vade.info_gain)
    "infogain": "I(p) = p(1−p)² (VADE)", "variance": "p(1−p)", "nonzero": "1 − p^G − (1−p)^G",
    "target": "−(p − target)² (MoPPS: closest to the target rate)",
}


def _read_config(path) -> dict:
    """The run's config.yaml (LightningCLI's resolved config) as a dict; {} when absent or unreadable."""
    if not path.is_file():
        return {}
    import yaml

    try:
        cfg = yaml.safe_load(path.read_text(errors="replace"))
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


@dataclass(frozen=True)
class Scoring:
    """The score a sampler ranked its candidates by: ``criterion`` (a SCORING key, None = the sampler
    does not rank, e.g. uniform), its parameters, and where that was read from."""

    criterion: str | None
    group_size: int = 8
    target: float = 0.5
    source: str = "default"

    @property
    def label(self) -> str:
        return SCORING.get(self.criterion, "none") if self.criterion != "target" else \
            f"−(p − {self.target:g})² (MoPPS: closest to the target rate)"

    def __call__(self, p) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        if self.criterion == "target":  # MoPPS sorts by (p - target)^2, smallest first (pfkit.data.samplers)
            return -((p - self.target) ** 2)
        import torch

        from pfkit.rl.vade import info_gain

        return info_gain(torch.from_numpy(p.copy()), self.criterion, self.group_size).numpy()


def scoring(data: Difficulty, sampler: str) -> Scoring:
    """What ``sampler`` ranked by: from the run's config.yaml when it names this sampler (its tracker's
    ``variant`` / ``criterion``, MoPPS's ``target_success_rate``), else the sampler's defaults."""
    from pfkit.rl.vade import VARIANTS

    init = ((data.config.get("model") or {}).get("init_args") or {})
    source = "config.yaml" if init.get("sampler") == sampler else "default"
    opts = (init.get("sampler_options") or {}) if source == "config.yaml" else {}
    g = int(init.get("group_size") or 8)
    if sampler.startswith("vade"):
        tracker = opts.get("tracker") or {}
        variant = VARIANTS.get(tracker.get("variant") or "paper", VARIANTS["paper"])
        return Scoring(tracker.get("criterion") or variant["criterion"], g, source=source)
    if sampler == "mopps":
        return Scoring("target", g, float(opts.get("target_success_rate", 0.5)), source=source)
    return Scoring(None, g, source=source)


def decision(data: Difficulty, sampler: str, step: int) -> dict:
    """What the sampler decided at ``step``: its candidates (rows with a logged ``draw``; without draws,
    every prompt at its posterior mean), their scores, and whether the selected ones are the top scorers."""
    sc = scoring(data, sampler)
    d = data.at(sampler, step)
    has_draw = "draw" in d.columns and d["draw"].notna().any()
    cand = d[d["draw"].notna()] if has_draw else d
    x = (cand["draw"] if has_draw else cand["p_mean"]).to_numpy(np.float64)
    sel = cand["selected"].to_numpy()
    out = {"scoring": sc, "has_draw": bool(has_draw), "candidates": len(cand), "selected": int(d["selected"].sum()),
           "selected_candidates": int(sel.sum()), "x": x, "chosen": sel, "pids": cand["pid"].to_numpy()}
    if sc.criterion is None or not len(cand):
        return out
    score = sc(x)
    k = int(sel.sum())
    top = np.zeros(len(score), bool)
    top[np.argsort(-score, kind="stable")[:k]] = True
    out.update(score=score, top_k_agree=int((top & sel).sum()), k=k,
               min_selected=float(score[sel].min()) if k else float("nan"),
               max_unselected=float(score[~sel].max()) if (~sel).any() else float("nan"),
               mean_x_selected=float(x[sel].mean()) if k else float("nan"),
               mean_score_selected=float(score[sel].mean()) if k else float("nan"),
               mean_score_all=float(score.mean()))
    return out


def decision_markdown(data: Difficulty, sampler: str, step: int) -> str:
    """The numbers of the step's decision, one line each with what it means."""
    dc = decision(data, sampler, step)
    sc, what = dc["scoring"], ("Thompson draw p̃" if dc["has_draw"] else "posterior mean (no draws logged)")
    src = "from the run's config.yaml" if sc.source == "config.yaml" else "the sampler's default"
    if sc.criterion is None:
        return (f"**{sampler}, step {step}**: {dc['selected']} prompts selected (their groups were trained on). "
                f"\n\nScoring curve: none — {sampler} does not rank prompts by a score (uniform: a seeded shuffle; "
                "filters: drop zero-variance groups after rollout); the plot shows I(p) for reference only.")
    head = (f"**{sampler}, step {step}**: {dc['candidates']} candidates ranked on their {what}, "
            f"{dc['selected']} selected ({dc['selected_candidates']} of them candidates) — the prompts the sampler "
            "scored this step and those whose groups it trained on.")
    lines = [head, f"Scoring curve: **{sc.label}** ({src}) — the score each candidate's {what} was ranked by."]
    if dc["k"]:
        lines += [
            f"Top-{dc['k']} agreement: **{dc['top_k_agree']} of {dc['k']}** selected candidates are among the "
            f"{dc['k']} highest scores — {dc['k']} of {dc['k']} means the selection is exactly the ranking "
            "(fewer: refills, filters or ties decided).",
            f"Lowest score selected = **{C.fmt(dc['min_selected'], 4)}**, highest not selected = "
            f"**{C.fmt(dc['max_unselected'], 4)}** — the cut the ranking made.",
            f"Mean {what} of the selected = **{C.fmt(dc['mean_x_selected'])}**; mean score selected = "
            f"**{C.fmt(dc['mean_score_selected'], 4)}** vs all candidates = **{C.fmt(dc['mean_score_all'], 4)}**."]
    return "\n\n".join(lines)


def effective_table(data: Difficulty) -> pd.DataFrame:
    """Effective-gradient ratio per step (rows) and sampler (columns), with the trained groups counted."""
    er = data.effective_ratio()
    if er.empty:
        return pd.DataFrame(columns=["step"])
    ratio = er.pivot(index="step", columns="sampler", values="ratio").round(4)
    groups = er.pivot(index="step", columns="sampler", values="groups")
    groups.columns = [f"{c} groups" for c in groups.columns]
    out = ratio.join(groups).reset_index()
    out.columns.name = None
    return out[["step", *[c for s in ratio.columns for c in (s, f"{s} groups")]]]


# ------------------------------------------------------------------------------------------- figures
def beta_pdf(x, a, b) -> np.ndarray:
    """The Beta(a, b) density, what ``scipy.stats.beta.pdf`` computes, through scipy.special (scipy.stats
    takes seconds to import and the default view's posteriors are drawn when the server starts)."""
    from scipy.special import betaln, xlog1py, xlogy

    x = np.asarray(x, dtype=np.float64)
    return np.exp(xlogy(a - 1, x) + xlog1py(b - 1, -x) - betaln(a, b))


def posterior_figure(data: Difficulty, sampler: str, step: int, prompts: list[str]):
    d = data.at(sampler, step).set_index("pid")
    prompts = [p for p in prompts if p in d.index][:MAX_PROMPTS_PLOTTED]
    if not prompts:
        return C.empty_figure("choose prompts to plot their Beta posteriors")
    fig, ax = C.figure(6.0, 4.0)
    x = np.linspace(0.001, 0.999, 400)
    for p in prompts:
        a, b = d.at[p, "alpha"], d.at[p, "beta"]
        ax.plot(x, beta_pdf(x, a, b), label=f"{p}: Beta({a:.2f}, {b:.2f})")
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
    d = data.of(sampler)
    per = data.selection(sampler)
    fig, (a1, a2) = C.figure(10.0, 3.4, ncols=2)
    a1.scatter(per["p_mean"], per["times_selected"], s=25)  # matplotlib: seaborn's import is seconds
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
    """The sampler's scoring curve with the step's candidates (draws, or posterior means) on it, the
    selected ringed; a sampler that does not rank shows its selected prompts' p against I(p) for reference."""
    dc = decision(data, sampler, step)
    sc = dc["scoring"] if dc["scoring"].criterion is not None else Scoring("infogain")
    what = "Thompson draw p̃" if dc["has_draw"] else "posterior mean (no draws logged)"
    fig, ax = C.figure(6.0, 4.0)
    p = np.linspace(0, 1, 201)
    ref = "" if dc["scoring"].criterion is not None else " — reference only, this sampler does not rank"
    ax.plot(p, sc(p), color="k", lw=1, label=sc.label + ref)
    xs, sel = dc["x"], dc["chosen"]
    ok = np.isfinite(xs)
    ys = sc(xs[ok])
    ax.scatter(xs[ok], ys, s=14, alpha=0.6, label=f"candidates ({what})")
    ax.scatter(xs[ok][sel[ok]], ys[sel[ok]], s=70, facecolors="none", edgecolors="tab:red",
               label=f"selected ({int(sel[ok].sum())})")
    if sc.criterion == "infogain":
        ax.axvline(1 / 3, color="k", lw=0.6, ls=":")
    ax.set(xlabel=what, ylabel="score", title=f"{sampler}, step {step}: what was chosen")
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
    """The sampler's numbers, each followed by what it means (one line each)."""
    d = data.of(sampler)
    sel = d[d["selected"]]
    lines = [f"**{sampler}**: {d['pid'].nunique()} prompts, {d['step'].nunique()} steps, {len(sel)} selections "
             "(prompts · steps logged in difficulty.parquet · (prompt, step) pairs the sampler trained on)."]
    if len(sel):
        lines.append(f"Mean |p − 0.5| of selected prompts = **{C.fmt((sel['p_mean'] - 0.5).abs().mean())}** vs "
                     f"all candidates = **{C.fmt((d['p_mean'] - 0.5).abs().mean())}** — how far the posterior mean "
                     "of what was chosen sits from p = 0.5; not a lower-is-better score: VADE's I(p) = p(1−p)² "
                     "peaks at p = 1/3 and p(1−p) at 0.5.")
        lines.append(f"Mean posterior p of selected = **{C.fmt(sel['p_mean'].mean())}** vs all = "
                     f"**{C.fmt(d['p_mean'].mean())}** — the estimated success rate the sampler chose at.")
        gain = sel["p_mean"] * (1 - sel["p_mean"]) ** 2
        allg = d["p_mean"] * (1 - d["p_mean"]) ** 2
        lines.append(f"Mean I(p) = p(1−p)² of selected = **{C.fmt(gain.mean())}** vs all = **{C.fmt(allg.mean())}** "
                     "(at the posterior mean; at most 4/27 = 0.148) — the information-gain score VADE ranks by.")
    er = data.effective_ratio()
    er = er[er["sampler"] == sampler]
    if len(er):
        at = er[er["step"] == int(step)]
        lines.append(f"Effective-gradient ratio = **{C.fmt((er['ratio'] * er['groups']).sum() / er['groups'].sum())}** "
                     f"overall, {C.fmt(at['ratio'].iloc[0]) if len(at) else 'n/a'} at step {step} — the share of "
                     "trained groups whose rewards were mixed (only they give a gradient).")
    zv = data.zero_variance()
    parts = []
    for (src, smp), g in zv.groupby(["source", "sampler"], sort=True):
        tot = g["fraction"].to_numpy() * g["groups"].to_numpy()
        at = g[g["step"] == int(step)]
        now = C.fmt(at["fraction"].iloc[0]) if len(at) else "n/a"
        parts.append(f"{smp} · {src}: **{C.fmt(tot.sum() / g['groups'].sum())}** overall, {now} at step {step}")
    lines.append(("Zero-variance groups: " + "; ".join(parts) + " — the share of groups whose G rewards were all "
                  "equal (advantage 0: the rollouts were spent for no gradient).") if parts else "No groups generated yet.")
    return "\n\n".join(lines)


def focus_markdown(data: Difficulty, sampler: str, step: int, pid: str) -> str:
    """One prompt: its posterior at ``step``, when it was selected, what its rollouts got."""
    h = data.history(sampler, pid)
    if h.empty:
        return f"Prompt **{pid}** has no rows for sampler {sampler}."
    at = h[h["step"] == int(step)]
    row = at.iloc[0] if len(at) else h.iloc[-1]
    chosen = h.loc[h["selected"], "step"].astype(int).tolist()
    lines = [f"**Prompt {pid}** ({sampler}) at step {int(row['step'])}: Beta(α = {row['alpha']:.2f}, β = "
             f"{row['beta']:.2f}) · posterior mean p = **{C.fmt(row['p_mean'])}** (α/(α+β), its estimated success "
             f"rate) · sd **{C.fmt(row['sd'])}** (uncertainty) · 95% credible interval "
             f"**[{C.fmt(row['ci_low'])}, {C.fmt(row['ci_high'])}]** (central, scipy.stats.beta).",
             f"Selected at **{len(chosen)}** of {len(h)} steps: {', '.join(map(str, chosen)) or 'never'} "
             "(the steps whose batch trained on this prompt)."]
    tr = h["trials"].sum()
    if tr > 0:
        lines.append(f"Generated groups: {int((h['trials'] > 0).sum())} with {int(tr)} rollouts, observed success "
                     f"rate **{C.fmt(h['successes'].sum() / tr)}** (successes / trials over all steps).")
    ro = data.rollouts_of(pid, sampler)
    if len(ro):
        here = ro[ro["step"] == int(step)]
        lines.append(f"Logged rollouts: **{len(ro)}** over {ro['step'].nunique()} steps, mean reward "
                     f"**{C.fmt(ro['reward'].mean())}**" + (f"; at step {int(step)}: {len(here)}, mean reward "
                     f"**{C.fmt(here['reward'].mean())}**" if len(here) else
                     f"; none at step {int(step)} (pick a step it was selected at to read them)") + ".")
    elif data.ro is not None:
        lines.append("No logged rollouts for this prompt.")
    return "\n\n".join(lines)


def focus_texts(data: Difficulty, sampler: str, step: int, pid: str) -> tuple[str, str, list[int]]:
    """(prompt text, the step's responses of ``pid`` one after another with their rewards, sample ids)."""
    ro = data.rollouts_of(pid, sampler)
    if ro.empty:
        return "", "", []
    here = ro[ro["step"] == int(step)]
    prompt = str(ro["prompt"].iloc[0])
    if here.empty:
        return prompt, f"# no rollouts of prompt {pid} at step {int(step)}; logged at steps " \
                       f"{', '.join(map(str, sorted(ro['step'].unique())))}", []
    parts = []
    for r in here.itertuples(index=False):
        score = "" if np.isnan(r.score) else f" · score {r.score:.3f}"
        hack = f" · hack: {r.hack}" if getattr(r, "hack", "") else ""
        parts.append(f"# ── sample {int(r.sample_idx)} · reward {r.reward:.3f}{score}{hack} ──\n{r.response.rstrip()}")
    return prompt, "\n\n".join(parts), [int(i) for i in here["sample_idx"]]


def focus_table(data: Difficulty, sampler: str, pid: str) -> pd.DataFrame:
    """The prompt's logged rollouts, all steps: step, sample, reward, score, passed (and hack)."""
    ro = data.rollouts_of(pid, sampler)
    cols = ["step", "sample_idx", "reward", "score", "passed"] + (["hack"] if "hack" in ro.columns else [])
    t = ro[cols].rename(columns={"sample_idx": "sample"}).copy()
    t["reward"], t["score"] = t["reward"].round(4), t["score"].round(4)
    return t.reset_index(drop=True)


def focus_tokens(data: Difficulty, sampler: str, step: int, pid: str, sample, mode: str) -> tuple[str, str]:
    """The per-token view of one rollout (the filtration app's renderer)."""
    if not data.has_tokens:
        return "", ("Per-token log-probs: not logged in this run (rollouts.parquet has no `tokens` / "
                    "`token_logprobs` columns).")
    ro = data.rollouts_of(pid, sampler)
    hit = ro[(ro["step"] == int(step)) & (ro["sample_idx"] == int(sample if sample is not None else -1))]
    if hit.empty:
        return "", f"No rollout {sample} of prompt {pid} at step {step}."
    return row_token_view(hit.iloc[0], f"Sample {int(sample)} (step {int(step)}, prompt {pid})", mode, data.has_ref)


def _image_paths(df: pd.DataFrame, ro: pd.DataFrame | None) -> dict[str, str]:
    """Prompt id -> image path, from an ``image`` column of rollouts.parquet (GRPO writes it for a prompt
    set with images) or of difficulty.parquet; {} for a text run (the page then has no image panel)."""
    out: dict[str, str] = {}
    for t in (df, ro):
        if t is not None and "image" in t.columns:
            has = t[t["image"].notna() & (t["image"].astype(str) != "")]
            out.update(zip(has["pid"], has["image"].astype(str)))
    return out


def prompt_image(data: Difficulty, pid):
    """(the prompt's image as a PIL image or None, a line saying which file it is or why it is not shown)."""
    path = data.images.get(str(pid))
    if path is None:
        return None, (f"No image logged for prompt {pid}: its image path comes with its rollouts, and this run "
                      "logged none of them (or the prompt is text only).")
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    f = Path(path).expanduser()
    if not f.is_absolute():  # a path relative to the run folder or to where the run was started
        f = next((c for c in (data.run.path / f, Path.cwd() / f) if c.exists()), data.run.path / f)
    try:
        with Image.open(f) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        return None, C.warning(f"the image of prompt {pid}, {f}, cannot be read ({type(e).__name__}); "
                               "was the data folder moved? The run logged the path it trained on.")
    return img, f"`{html.escape(str(f))}` · {img.width}×{img.height} px, the image the prompt was asked about."


def focus_figure(data: Difficulty, sampler: str, pid: str, current: int | None):
    """The prompt's posterior over steps: mean with its 95% credible band, selected steps, the observed
    mean reward of each logged group."""
    from matplotlib.ticker import MaxNLocator

    h = data.history(sampler, pid)
    if h.empty:
        return C.empty_figure(f"no rows for prompt {pid}")
    fig, ax = C.figure(7.0, 3.4)
    ax.fill_between(h["step"], h["ci_low"], h["ci_high"], alpha=0.25, color="tab:blue", label="95% credible interval")
    ax.plot(h["step"], h["p_mean"], color="tab:blue", lw=1.4, label="posterior mean α/(α+β)")
    sel = h[h["selected"]]
    ax.plot(sel["step"], sel["p_mean"], "o", color="tab:red", ms=5, label="selected")
    ro = data.rollouts_of(pid, sampler)
    if len(ro):
        g = ro.groupby("step")["reward"].mean()
        ax.plot(g.index, g.to_numpy(), "x", color="k", ms=6, label="mean reward of its rollouts")
    if current is not None:
        ax.axvline(current, color="k", lw=0.7, alpha=0.4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="success probability p", ylim=(-0.02, 1.02), title=f"prompt {pid}: posterior over steps")
    ax.legend(fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------------- app
def build_app(run_dir):
    return C.guarded(TITLE, lambda: _build(Difficulty(run_dir)))


def _first_sampler(data: Difficulty) -> str:
    return next((s for s in data.samplers if s.startswith("vade")), data.samplers[0])  # the method of interest


def _header(data: Difficulty) -> str:
    ro = "" if data.ro is not None else " · (no rollouts.parquet: zero-variance from difficulty only, no rollout texts)"
    n = 0 if data.ro is None else len(data.ro)
    return (f"# {TITLE}\n`{html.escape(str(data.run.path))}` · samplers: {', '.join(data.samplers)} · "
            f"{len(data.df)} difficulty rows · {n} rollouts{ro}")


def _build(data: Difficulty):
    import gradio as gr
    import scipy.special  # noqa: F401  (the credible interval and the posteriors of the default view)

    runs = C.Runs(data, Difficulty)
    home, get = runs.home, runs.get
    s0 = _first_sampler(data)
    steps0 = data.steps(s0)
    st0 = steps0[-1]
    ps0 = data.default_prompts(s0, st0)
    focus0 = (ps0 or [None])[0]
    # The default view (texts and its two figures) is in the page itself: no event round trip, and no
    # figure drawn per page load, before the page is usable. The load event fills it only when the URL names
    # another view or the run has grown since the server started. The decision and over-the-run figures
    # sit in closed sections, drawn when opened (issue #20: the page load budget).
    prompt0, texts0, ids0 = focus_texts(data, s0, st0, focus0)
    found0 = data.ro if data.ro is not None else None
    images = data.has_images  # the prompt's image panel exists only for runs that logged images
    with gr.Blocks(title=TITLE) as demo:
        run_state = gr.State(home)
        header = gr.Markdown(_header(data), elem_id="header")
        if data.repeated:
            gr.Markdown(C.warning(
                f"{data.repeated} rows repeat a (sampler, step, prompt_id) already logged: the run wrote the same "
                "step more than once (a reused run folder, or a step counter that did not advance). Posteriors "
                "show one of the repeated rows; zero-variance counts use every generated group."), elem_id="pfkit-warning")
        with gr.Row():
            sampler = gr.Dropdown(choices=data.samplers, value=s0, label="sampler", elem_id="sampler")
            step = gr.Dropdown(choices=steps0, value=st0, label="step", elem_id="step")
            prompts = gr.Dropdown(choices=sorted(data.of(s0)["pid"].unique()), value=ps0, multiselect=True,
                                  label=f"prompts to plot (≤ {MAX_PROMPTS_PLOTTED})", elem_id="prompts")
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
            share = gr.Markdown(runs.link(home, sampler=s0, step=st0, prompt=focus0), elem_id="share")
        stats = gr.Markdown(stats_markdown(data, s0, st0), elem_id="stats")

        with gr.Accordion("One prompt: its posterior over steps, its rollouts, when it was selected", open=True):
            with gr.Row():
                focus = gr.Dropdown(choices=sorted(data.of(s0)["pid"].unique()), value=focus0, label="prompt",
                                    elem_id="focus")
                sample = gr.Dropdown(choices=ids0, value=ids0[0] if ids0 else None, label="sample (per-token view)",
                                     elem_id="sample")
                token_mode = gr.Radio(choices=list(TOKEN_MODES), value=TOKEN_MODES[0], label="shade tokens by",
                                      elem_id="token-mode")
            focus_md = gr.Markdown(focus_markdown(data, s0, st0, focus0) if focus0 else "", elem_id="focus-info")
            with gr.Row():
                if images:  # the prompt's image next to its posterior (image-and-text prompts, issue #22)
                    img0, img_note0 = prompt_image(data, focus0)
                    with gr.Column(scale=1, min_width=200):
                        image = gr.Image(img0, type="pil", format="png", label="the prompt's image", interactive=False,
                                         elem_id="focus-image", height=260)
                        image_note = gr.Markdown(img_note0, elem_id="focus-image-note")
                focus_plot = gr.Plot(_plot(data, "focus", s0, focus0, st0) if focus0 else None, scale=3,
                                     label="posterior over steps (band: 95% credible interval)", elem_id="focus-plot")
            with gr.Row():
                # wrapped and scrolled: no line is cut in a narrow column
                prompt_code = gr.Code(prompt0, language="python", label="prompt", interactive=False, wrap_lines=True,
                                      lines=4, max_lines=16, elem_id="focus-prompt")
                responses = gr.Code(texts0, language="python", label="its rollouts at the step", interactive=False,
                                    wrap_lines=True, lines=8, max_lines=30, elem_id="focus-responses",
                                    elem_classes=["pfkit-response"])
            tok0 = focus_tokens(data, s0, st0, focus0, ids0[0] if ids0 else None, TOKEN_MODES[0]) if focus0 else ("", "")
            token_info = gr.Markdown(tok0[1], elem_id="token-info")
            tokens_html = gr.HTML(tok0[0], elem_id="tokens")
            focus_rows = gr.Dataframe(focus_table(data, s0, focus0) if focus0 else None, interactive=False,
                                      label="all logged rollouts of this prompt", elem_id="focus-rollouts",
                                      max_height=300)

        with gr.Accordion("Search the run's rollouts", open=True, visible=data.ro is not None):
            q_text, q_regex, q_fields = C.text_query_row(FIELDS)
            with gr.Row():
                q_rmin, q_rmax = C.bound_boxes("reward", "r")
                q_smin, q_smax = C.bound_boxes("score", "s")
                q_passed = gr.Radio(choices=[C.ANY, PASSED, FAILED], value=C.ANY, label="unit tests (score = 1)",
                                    elem_id="q-passed")
                q_hack = C.hack_radio(data.has_hack, FLAGGED, CLEAN)
            has = found0 is not None
            search_btn, download, found_md, results, result_keys = C.results_block(
                "Search", "search", C.csv_file(csv_frame(found0), CSV_NAME) if has else None,
                search_markdown(found0, len(found0)) if has else "", results_table(found0) if has else None,
                C.result_keys(found0) if has else [], table_id="results",
                label="matching rollouts (select a row to open it)")

        post = gr.Plot(_plot(data, "posterior", s0, st0, ps0), label="Beta posteriors at the step",
                       elem_id="posteriors")
        dec_open, run_open = gr.State(False), gr.State(False)
        with gr.Accordion("What the sampler decided at the step: its scoring curve, the candidates' draws, the "
                          "selected set; the effective-gradient ratio per sampler", open=False,
                          elem_id="decision-section") as dec_section:
            with gr.Row():
                gain = gr.Plot(label="the sampler's scoring curve with the step's candidates", elem_id="infogain")
                eff = gr.Plot(label="effective-gradient ratio", elem_id="effective-ratio")
            with gr.Row():
                decision_md = gr.Markdown(elem_id="decision")
                eff_table = gr.Dataframe(label="effective-gradient ratio per step (share of trained groups with "
                                         "mixed rewards; groups = how many were trained)", interactive=False,
                                         elem_id="effective-table", max_height=300)
        with gr.Accordion("Over the run: zero-variance groups, α / β / mean of the plotted prompts, selection vs "
                          "estimated p", open=False, elem_id="run-section") as run_section:
            zero = gr.Plot(label="zero-variance groups", elem_id="zero-variance")
            traj = gr.Plot(label="α / β / mean over steps", elem_id="trajectories")
            sel = gr.Plot(label="selection vs estimated p", elem_id="selection")
        with gr.Accordion("All prompts at the step, sortable by difficulty and uncertainty", open=False,
                          elem_id="prompt-section"):
            sort = gr.Radio(choices=list(SORTS), value=next(iter(SORTS)), label="sort prompts", elem_id="sort")
            table = gr.Dataframe(data.prompt_table(s0, st0, next(iter(SORTS))),
                                 label="prompts at the step (sd = posterior standard deviation = uncertainty)",
                                 interactive=False, elem_id="prompt-table")
        stamp0 = _stamp(data)

        def on_sampler(run_v, s):
            d = get(run_v)
            st = d.steps(s)
            pids = sorted(d.of(s)["pid"].unique())
            dflt = d.default_prompts(s, st[-1])
            return (gr.Dropdown(choices=st, value=st[-1]), gr.Dropdown(choices=pids, value=dflt),
                    gr.Dropdown(choices=pids, value=(dflt or pids)[0]))

        def ok(d, s, st):
            return s is not None and st is not None and s in d.samplers

        def views(run_v, s, st, ps):
            d = get(run_v)
            if not ok(d, s, st):
                return gr.skip(), gr.skip()
            return stats_markdown(d, s, int(st)), _plot(d, "posterior", s, int(st), list(ps or []))

        def decision_views(run_v, s, st, is_open):
            d = get(run_v)
            if not is_open or not ok(d, s, st):
                return (gr.skip(),) * 4
            return (_plot(d, "infogain", s, int(st)), _plot(d, "effective"), decision_markdown(d, s, int(st)),
                    effective_table(d))

        def run_views(run_v, s, st, ps, is_open):
            d = get(run_v)
            if not is_open or not ok(d, s, st):
                return (gr.skip(),) * 3
            return (_plot(d, "zero"), _plot(d, "trajectory", s, list(ps or []), int(st)), _plot(d, "selection", s))

        def tab(run_v, s, st, srt):
            d = get(run_v)
            if not ok(d, s, st):
                return gr.skip()
            return d.prompt_table(s, int(st), srt)

        def on_focus(run_v, s, st, pid, smp, mode):
            d = get(run_v)
            if pid is None or not ok(d, s, st):
                return (gr.skip(),) * len(focus_out)
            prompt, texts, ids = focus_texts(d, s, int(st), str(pid))
            smp = int(smp) if smp is not None and int(smp) in ids else (ids[0] if ids else None)
            html_v, info = focus_tokens(d, s, int(st), str(pid), smp, mode)
            out = (focus_markdown(d, s, int(st), str(pid)), prompt, texts, gr.Dropdown(choices=ids, value=smp),
                   html_v, info, focus_table(d, s, str(pid)), runs.link(run_v, sampler=s, step=int(st), prompt=pid,
                                                                        sample=smp))
            return out + (prompt_image(d, str(pid)) if images else ())

        def on_focus_plot(run_v, s, st, pid):
            d = get(run_v)
            if s is None or pid is None or s not in d.samplers:
                return gr.skip()
            return _plot(d, "focus", s, str(pid), None if st is None else int(st))

        def on_tokens(run_v, s, st, pid, smp, mode):
            if s is None or st is None or pid is None or smp is None:
                return gr.skip(), gr.skip(), gr.skip()
            return (*focus_tokens(get(run_v), s, int(st), str(pid), smp, mode),
                    runs.link(run_v, sampler=s, step=int(st), prompt=pid, sample=smp))

        def on_search(run_v, text, regex, fields, rmin, rmax, smin, smax, passed, hack):
            d = get(run_v)
            try:
                found = d.search(Query(str(text or ""), bool(regex), fields, (rmin, rmax), passed, hack, (smin, smax)))
            except C.BadQuery as e:
                return f"**Search not run:** {e}", gr.skip(), gr.skip(), gr.skip()
            return C.results_update(search_markdown(found, len(d.ro)), results_table(found), csv_frame(found),
                                    CSV_NAME, C.result_keys(found))

        def on_pick(run_v, s, keys, evt: gr.SelectData):
            """A results row -> that rollout's step, prompt and sample."""
            d = get(run_v)
            key = C.picked(evt, keys)
            if key is None:
                return gr.skip(), gr.skip(), gr.skip()
            st, pid, smp = key
            steps = d.steps(s)
            return (gr.Dropdown(choices=steps, value=int(st) if int(st) in steps else steps[-1]),
                    gr.Dropdown(value=str(pid)), gr.Dropdown(value=int(smp)))

        def first_view(mode_v, request: gr.Request):
            """The view the URL names (?run=&sampler=&step=&prompt=&sample=) with its figures; nothing to send
            when it is the default view of an unchanged run (the page already holds it)."""
            p = C.query_params(request)
            run_v, msg = runs.open(p.get("run", ""))
            d = get(run_v)
            if run_v == home and not msg and not ({"sampler", "step", "prompt", "sample"} & set(p)) \
                    and _stamp(d) == stamp0:
                return (gr.skip(),) * len(load_out)
            s = p.get("sampler") if p.get("sampler") in d.samplers else _first_sampler(d)
            steps = d.steps(s)
            st = C.int_param(p, "step", steps, steps[-1])
            pids = sorted(d.of(s)["pid"].unique())
            dflt = d.default_prompts(s, st)
            pid = p["prompt"] if p.get("prompt") in pids else (dflt or pids)[0]
            _, _, ids = focus_texts(d, s, st, pid)
            smp = C.int_param(p, "sample", ids, ids[0] if ids else None)
            return (run_v, _header(d), msg, gr.Dropdown(choices=d.samplers, value=s), gr.Dropdown(choices=steps, value=st),
                    gr.Dropdown(choices=pids, value=dflt), gr.Dropdown(choices=pids, value=pid),
                    *on_focus(run_v, s, st, pid, smp, mode_v), on_focus_plot(run_v, s, st, pid),
                    *views(run_v, s, st, dflt))

        first_view.__annotations__["request"] = gr.Request  # see filtration: string annotations
        on_pick.__annotations__["evt"] = gr.SelectData

        def on_reload(run_v, s):
            d = get(run_v)
            msg = C.reload(d)
            s = s if s in d.samplers else d.samplers[0]
            st = d.steps(s)
            msg = msg or f"Reloaded at {time.strftime('%H:%M:%S')}: {len(d.df)} rows, newest step {st[-1]}."
            return gr.Dropdown(choices=d.samplers, value=s), gr.Dropdown(choices=st, value=st[-1]), msg, _header(d)

        view_in, view_out = [run_state, sampler, step, prompts], [stats, post]
        dec_in, dec_out = [run_state, sampler, step, dec_open], [gain, eff, decision_md, eff_table]
        run_in, run_out = [run_state, sampler, step, prompts, run_open], [zero, traj, sel]
        focus_in = [run_state, sampler, step, focus, sample, token_mode]
        focus_out = [focus_md, prompt_code, responses, sample, tokens_html, token_info, focus_rows, share]
        if images:
            focus_out += [image, image_note]
        plot_in = [run_state, sampler, step, focus]
        tab_in = [run_state, sampler, step, sort]
        q_in = [run_state, q_text, q_regex, q_fields, q_rmin, q_rmax, q_smin, q_smax, q_passed, q_hack]
        search_out = [found_md, results, download, result_keys]

        sampler.change(on_sampler, [run_state, sampler], [step, prompts, focus])
        gr.on([sampler.change, step.change, prompts.change], views, view_in, view_out, trigger_mode=C.LATEST)
        gr.on([sampler.change, step.change], decision_views, dec_in, dec_out, trigger_mode=C.LATEST)
        gr.on([sampler.change, step.change, prompts.change], run_views, run_in, run_out, trigger_mode=C.LATEST)
        # a closed section computes nothing; opening it draws it for the current view (cached figures)
        dec_section.expand(lambda: True, None, dec_open).then(decision_views, dec_in, dec_out)
        dec_section.collapse(lambda: False, None, dec_open)
        run_section.expand(lambda: True, None, run_open).then(run_views, run_in, run_out)
        run_section.collapse(lambda: False, None, run_open)
        gr.on([sampler.change, step.change, sort.change], tab, tab_in, table, trigger_mode=C.LATEST)
        (gr.on([step.change, focus.change], on_focus, focus_in, focus_out, trigger_mode=C.LATEST)
         .then(on_focus_plot, plot_in, focus_plot))
        gr.on([sample.input, token_mode.change], on_tokens, focus_in, [tokens_html, token_info, share],
              trigger_mode=C.LATEST)
        gr.on([search_btn.click, q_text.submit], on_search, q_in, search_out, trigger_mode=C.LATEST)
        (results.select(on_pick, [run_state, sampler, result_keys], [step, focus, sample])
         .then(on_focus, focus_in, focus_out).then(on_focus_plot, plot_in, focus_plot))
        load_out = [run_state, header, status, sampler, step, prompts, focus, *focus_out, focus_plot, *view_out]
        demo.load(first_view, [token_mode], load_out)
        (reload_btn.click(on_reload, [run_state, sampler], [sampler, step, status, header])
         .then(views, view_in, view_out).then(decision_views, dec_in, dec_out).then(run_views, run_in, run_out)
         .then(tab, tab_in, table).then(on_focus, focus_in, focus_out).then(on_focus_plot, plot_in, focus_plot)
         .then(on_search, q_in, search_out))
    return demo


FIGURES = {"posterior": posterior_figure, "trajectory": trajectory_figure, "selection": selection_figure,
           "zero": zero_variance_figure, "effective": effective_ratio_figure,
           "infogain": infogain_figure, "focus": focus_figure}


def _plot(data: Difficulty, name: str, *args):
    """Figure ``name`` of ``data`` for ``args`` as the page receives it, drawn once (``Difficulty.plots``)."""
    key = (name, *(tuple(a) if isinstance(a, list) else a for a in args))
    return data.plots(key, lambda: FIGURES[name](data, *args))


def _stamp(data: Difficulty) -> tuple:
    """What the page's built-in default view depends on (a reload that adds rows changes it)."""
    return len(data.df), 0 if data.ro is None else len(data.ro)


def add_arguments(parser):
    C.add_arguments(parser, "difficulty.parquet (a GRPO run with a VADE/uniform/DAPO sampler)")


def main(args):
    return C.launch(build_app(args.run_dir), args)
