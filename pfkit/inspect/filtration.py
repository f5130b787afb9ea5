"""PF-PPO filtration inspector: ``pfkit inspect filtration RUN_DIR``.

Reads ``rollouts.parquet`` (step, prompt_id, sample_idx, prompt, response, reward, score, kept,
advantage). For a chosen step and prompt it shows the N responses side by side with their reward,
unit-test score, kept/dropped flag and advantage; for the step, reward against test score with the kept
samples marked and R² (kept vs all); R² and pass rate over all steps. The strategy selector re-applies
``pfkit.rl.filtration.select`` (none / bon / br / bw) to the *logged* rewards, so one can see what
another strategy would have trained on and whether its kept samples' rewards track the tests better
(the paper's criterion for choosing a strategy). "logged" shows what the run actually kept.

Across the whole run: a search over every logged sample (text or regex over prompt and response; reward
and score ranges; kept/dropped; passed/failed; the sandbox's reward-hack flag, optional string column
``hack``), whose results jump to the sample and download as CSV; a per-token view of one response when the
run logged ``tokens`` / ``token_logprobs`` (and ``ref_token_logprobs``); the reliability curve (pass rate
per reward bin, the paper's Figure 1) over a range of steps or a samples file such as the SFT sample set,
with R² per strategy and the strategy ``pfkit analyze-filtration`` would recommend (by binned R²).
The URL query ``?run=DIR&step=S&prompt=P&sample=I`` opens a given view (the page shows the link).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pfkit.inspect import _common as C

TITLE = "PF-PPO filtration inspector"
COLUMNS = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "kept", "advantage"]
STRATEGIES = ("logged", "none", "bon", "br", "bw")
PASS_AT = 1.0 - 1e-9  # a sample "passes" when all its unit tests pass (score is the fraction passed)
FIELDS = {"prompt and response": ("prompt", "response"), "prompt only": ("prompt",), "response only": ("response",)}
KEPT, DROPPED, PASSED, FAILED, FLAGGED, CLEAN = "kept", "dropped", "passed", "failed", "flagged", "clean"
TOKEN_MODES = ("log-prob (policy)", "policy − reference")
MAX_CARDS = 32  # response cards side by side (a larger group's other samples are in the table below them)
CSV_COLUMNS = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "passed", "kept",
               "advantage", "hack"]
CSV_NAME = "pfkit-filtration-samples"


def _r2(rewards: np.ndarray, scores: np.ndarray, bins: int | None = None) -> float:
    """``pfkit.rl.filtration.r_squared`` (NaN where undefined: the page shows "n/a")."""
    from pfkit.rl.filtration import r_squared

    return r_squared(np.array(rewards, dtype=np.float64), np.array(scores, dtype=np.float64), bins=bins)


class Rollouts:
    """The logged samples of one run, indexed for the views (all logic; the UI only formats)."""

    def __init__(self, run_dir):
        self.run, df = C.load_table(run_dir, "rollouts", COLUMNS)
        # A (step, prompt, sample) logged more than once (a reused folder, a step counter that did not
        # advance) would merge groups; each repeat becomes its own group "<prompt_id> #k" and is flagged.
        df["round"] = df.groupby(["step", "prompt_id", "sample_idx"], sort=False).cumcount()
        self.repeated = int((df["round"] > 0).sum())
        df = df.sort_values(["step", "prompt_id", "round", "sample_idx"], kind="stable").reset_index(drop=True)
        df["reward"] = df["reward"].astype(np.float64)
        df["score"] = df["score"].astype(np.float64)
        df["kept"] = df["kept"].astype(bool)
        df["passed"] = df["score"] >= PASS_AT
        df["pid"] = df["prompt_id"].astype(str)  # ids may be ints or task-id strings; the UI keys on text
        df.loc[df["round"] > 0, "pid"] += " #" + df["round"].astype(str)
        # optional columns: the sandbox's reward-hack label ("" = none) and per-token log-probs
        self.has_hack = "hack" in df.columns
        if self.has_hack:
            df["hack"] = df["hack"].fillna("").astype(str)
        self.has_tokens = "tokens" in df.columns and "token_logprobs" in df.columns
        self.has_ref = self.has_tokens and "ref_token_logprobs" in df.columns
        self.df = df
        self.steps = [int(s) for s in df["step"].unique()]
        self._by_step = {int(s): g for s, g in df.groupby("step", sort=True)}
        self._kept_cache: dict[tuple, np.ndarray] = {}

    # ------------------------------------------------------------------ selection
    def prompts(self, step: int) -> list[tuple[str, int]]:
        g = self._by_step[int(step)]
        first = g.drop_duplicates("pid")
        out = []
        for pid, text in zip(first["pid"], first["prompt"]):
            head = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
            out.append((f"{pid}: {head[:60]}", pid))
        return out

    def step(self, step: int) -> pd.DataFrame:
        return self._by_step[int(step)]

    def kept(self, step: int, strategy: str, seed: int = 0) -> np.ndarray:
        """Kept flags of a step's rows (row order of ``step()``) under ``strategy``."""
        g = self.step(step)
        if strategy == "logged":
            return g["kept"].to_numpy()
        return _reselect(self, int(step), strategy, int(seed))

    def step_stats(self, step: int, strategy: str, seed: int = 0, bins: int | None = None) -> dict:
        g = self.step(step)
        r, s = g["reward"].to_numpy(), g["score"].to_numpy()
        k_log = g["kept"].to_numpy()
        k = self.kept(step, strategy, seed)
        return {
            "step": int(step), "samples": len(g), "prompts": int(g["pid"].nunique()),
            "r2_all": _r2(r, s, bins), "r2_kept_logged": _r2(r[k_log], s[k_log], bins),
            "r2_kept": _r2(r[k], s[k], bins), "n_kept": int(k.sum()),
            "pass_rate": float(g["passed"].mean()), "pass_rate_kept": float(g["passed"][k].mean()) if k.any() else float("nan"),
        }

    def curves(self, strategy: str, seed: int = 0, bins: int | None = None) -> pd.DataFrame:
        return _curves(self, strategy, int(seed), bins)

    def samples(self, step: int, prompt_id: str) -> list[int]:
        g = self.step(step)
        return [int(i) for i in g.loc[g["pid"] == str(prompt_id), "sample_idx"]]

    def row(self, step: int, prompt_id: str, sample: int):
        g = self.step(step)
        hit = g[(g["pid"] == str(prompt_id)) & (g["sample_idx"] == int(sample))]
        return None if hit.empty else hit.iloc[0]

    # ------------------------------------------------------------------ across the run
    def search(self, q: Query) -> pd.DataFrame:
        """The logged samples (all steps) matching ``q``; raises C.BadQuery for a query that cannot run."""
        df = self.df
        if q.fields not in FIELDS:
            raise C.BadQuery(f"search field must be one of {', '.join(FIELDS)}, got {q.fields!r}")
        m = C.text_mask(df, FIELDS[q.fields], q.text, regex=q.regex)
        m &= C.range_mask(df["reward"], *q.reward, name="reward")
        m &= C.range_mask(df["score"], *q.score, name="score")
        m &= C.flag_mask(df["kept"], q.kept, KEPT, DROPPED)
        m &= C.flag_mask(df["passed"], q.passed, PASSED, FAILED)
        if q.hack not in (None, "", C.ANY):
            if not self.has_hack:
                raise C.BadQuery("this run logs no reward-hack flag (rollouts.parquet has no 'hack' column)")
            m &= C.flag_mask(df["hack"] != "", q.hack, FLAGGED, CLEAN)
        return df[m]

    def steps_between(self, first, last) -> pd.DataFrame:
        """Samples of steps ``first..last`` (inclusive; an empty bound is open)."""
        keep = C.range_mask(self.df["step"], first, last, name="step")
        if not keep.any():
            raise C.BadQuery(f"no samples at steps {first}–{last}; logged steps: {self.steps[0]}–{self.steps[-1]}")
        return self.df[keep]


@dataclass(frozen=True)
class Query:
    """A search over every logged sample. Ranges are (min, max), None = open; flags are ANY or a value."""

    text: str = ""
    regex: bool = False
    fields: str = "prompt and response"
    reward: tuple = (None, None)
    score: tuple = (None, None)
    kept: str = C.ANY
    passed: str = C.ANY
    hack: str = C.ANY


def results_table(found: pd.DataFrame, limit: int = C.SHOWN) -> pd.DataFrame:
    """The search results as listed on the page (first ``limit``): one row per sample, a response excerpt."""
    return C.results_table(found, extra=("kept",), limit=limit)


def csv_frame(found: pd.DataFrame) -> pd.DataFrame:
    """What "download as CSV" writes: every matching sample with its text and numbers (no token lists)."""
    return C.csv_frame(found, CSV_COLUMNS)


def _search_parts(found: pd.DataFrame) -> list[str]:
    return [f"{found['step'].nunique()} steps, {found[['step', 'pid']].drop_duplicates().shape[0]} prompt groups",
            f"pass rate **{C.fmt(found['passed'].mean())}**", f"mean reward **{C.fmt(found['reward'].mean())}**",
            f"kept **{int(found['kept'].sum())}**"]


def search_markdown(found: pd.DataFrame, total: int) -> str:
    return C.search_markdown(found, total, "samples", _search_parts, "Select a row to open that sample.")


# ------------------------------------------------------------------------------------------ per token
def token_view(data: Rollouts, step: int, prompt_id: str, sample: int, mode: str) -> tuple[str, str]:
    """(HTML of the response's tokens shaded by log-prob or policy − reference, one-line summary)."""
    if not data.has_tokens:
        return "", ("Per-token log-probs: not logged in this run (rollouts.parquet has no `tokens` / "
                    "`token_logprobs` columns).")
    row = data.row(step, prompt_id, sample)
    if row is None:
        return "", f"No sample {sample} in step {step}, prompt {prompt_id}."
    return row_token_view(row, f"Sample {sample} (step {step}, prompt {prompt_id})", mode, data.has_ref)


def row_token_view(row, label: str, mode: str, has_ref: bool) -> tuple[str, str]:
    """The per-token view of one logged sample (a row with ``tokens``, ``token_logprobs`` and, with
    ``has_ref``, ``ref_token_logprobs``); ``label`` names it in the summary line. Shared by the apps."""
    tokens, lp = row["tokens"], row["token_logprobs"]
    if tokens is None or lp is None or len(tokens) == 0:
        return "", f"Per-token log-probs: not logged for {label[0].lower() + label[1:]}."
    tokens = [str(t) for t in tokens]
    lp = np.asarray(lp, dtype=np.float64)
    ref = None
    if has_ref and row["ref_token_logprobs"] is not None and len(row["ref_token_logprobs"]):
        ref = np.asarray(row["ref_token_logprobs"], dtype=np.float64)
    n = min(len(tokens), len(lp), len(ref) if ref is not None else len(lp))
    note = "" if n == len(tokens) == len(lp) else f" (lengths differ: {len(tokens)} tokens, {len(lp)} log-probs; first {n} shown)"
    tokens, lp = tokens[:n], lp[:n]
    ref = ref[:n] if ref is not None else None
    titles = []
    for i, (t, x) in enumerate(zip(tokens, lp)):
        tip = f"#{i} {t!r}: log p = {x:.4f}"
        if ref is not None:
            tip += f" · log p_ref = {ref[i]:.4f} · policy − ref = {x - ref[i]:+.4f}"
        titles.append(tip)
    lowest = int(np.nanargmin(lp))
    md = (f"{label}: {n} tokens{note} · sum log p = **{C.fmt(lp.sum())}** · "
          f"mean log p = **{C.fmt(lp.mean())}** · least likely token #{lowest} {tokens[lowest]!r} "
          f"(log p = {C.fmt(lp[lowest])})")
    if mode == TOKEN_MODES[1]:
        if ref is None:
            return (C.token_html(tokens, lp, titles, diverging=False),
                    md + " · reference log-probs: not logged in this run (no `ref_token_logprobs`); shaded by log p.")
        d = lp - ref
        top = int(np.nanargmax(np.abs(d)))
        md += (f" · mean (log p − log p_ref) = **{C.fmt(d.mean())}** (the k1 KL estimate per token) · largest "
               f"|difference| at token #{top} {tokens[top]!r} ({d[top]:+.3f}). Blue: the policy likes the token "
               f"more than the reference; red: less.")
        return C.token_html(tokens, d, titles, diverging=True), md
    md += " · darker red = less likely under the policy; hover a token for its numbers."
    if ref is not None:
        md += f" · mean (log p − log p_ref) = **{C.fmt((lp - ref).mean())}**"
    return C.token_html(tokens, lp, titles, diverging=False), md


# ------------------------------------------------------------------------------------------ reliability
@dataclass
class Reliability:
    """The reliability analysis of one sample set: curve (per reward bin), R² table per strategy, advice."""

    where: str
    samples: int
    prompts: int
    bins: int
    curve: pd.DataFrame
    table: pd.DataFrame
    best: str | None  # by binned R² (issue #15: the paper's grouped form)
    best_plain: str | None


def reliability(samples: pd.DataFrame, bins: int, where: str,
                strategies=("none", "bon", "br", "bw")) -> Reliability:
    """Pass rate per reward bin (``reliability_curve``) and analyze-filtration's R² table and advice
    (``pfkit.rl.filtration.strategy_table`` / ``recommend``, the functions the command calls)."""
    from pfkit.rl.filtration import recommend, reliability_curve, strategy_table

    if int(bins) < 2:
        raise C.BadQuery(f"bins must be >= 2, got {bins}")
    pid = samples["pid"] if "pid" in samples.columns else samples["prompt_id"].astype(str)
    frame = pd.DataFrame({"prompt_id": pid.to_numpy(), "reward": samples["reward"].to_numpy(np.float64),
                          "score": samples["score"].to_numpy(np.float64)})
    if "sample_idx" in samples.columns:
        frame["sample_idx"] = samples["sample_idx"].to_numpy()
    if "step" in samples.columns:
        frame["step"] = samples["step"].to_numpy()
    passed = (frame["score"] >= PASS_AT).astype(np.float64)
    curve = reliability_curve(frame["reward"], passed, bins=int(bins))
    table = strategy_table(frame, strategies, bins=int(bins))
    keys = ["step", "prompt_id"] if "step" in frame.columns else ["prompt_id"]
    return Reliability(where, len(frame), int(frame.groupby(keys).ngroups), int(bins), curve, table,
                       recommend(table, by="r2_binned"), recommend(table, by="r2"))


def load_sample_file(path: str) -> pd.DataFrame:
    """A samples file or run folder (e.g. the PF-PPO demo's ``sft_samples``), as analyze-filtration reads it."""
    from pfkit.commands.analyze import load_samples
    from pfkit.errors import UserError

    try:
        df, _ = load_samples(str(path).strip())
    except UserError as e:
        raise C.BadQuery(str(e)) from None
    return df.reset_index(drop=True)


def reliability_markdown(rel: Reliability) -> str:
    from pfkit.rl.filtration import CAVEAT, STRATEGY_LABELS

    head = (f"**{rel.where}**: {rel.samples} samples, {rel.prompts} prompt groups, {rel.bins} equal-count "
            f"reward bins.")
    t = rel.table.set_index("strategy")
    if rel.best is None:
        return head + "\n\nRecommendation: none (binned R² undefined: the pass rate does not vary over the bins)."
    if not np.isfinite(t.loc[rel.best, "r2_binned"]):  # recommend() falls back to the plain R²
        return (head + f"\n\nRecommendation (as `pfkit analyze-filtration --bins {rel.bins}`): "
                f"**{STRATEGY_LABELS.get(rel.best, rel.best)}** by plain R² = {C.fmt(t.loc[rel.best, 'r2'])} "
                f"(binned R² undefined over these bins).\n\n_{CAVEAT}_")
    line = (f"Recommendation (as `pfkit analyze-filtration --bins {rel.bins}`, by **binned** R²): "
            f"**{STRATEGY_LABELS.get(rel.best, rel.best)}** — binned R² = **{C.fmt(t.loc[rel.best, 'r2_binned'])}**, "
            f"plain R² = {C.fmt(t.loc[rel.best, 'r2'])}.")
    if rel.best_plain is not None and rel.best_plain != rel.best:
        line += (f" By plain R² it would be {STRATEGY_LABELS.get(rel.best_plain, rel.best_plain)} "
                 f"({C.fmt(t.loc[rel.best_plain, 'r2'])}).")
    return f"{head}\n\n{line}\n\n_{CAVEAT}_"


def reliability_tables(rel: Reliability) -> tuple[pd.DataFrame, pd.DataFrame]:
    c = rel.curve
    curve = pd.DataFrame({"bin": c["bin"], "reward from": c["reward_low"].round(4), "reward to": c["reward_high"].round(4),
                          "samples": c["count"], "pass rate": c["score_mean"].round(4),
                          "95% low": c["ci_low"].round(4), "95% high": c["ci_high"].round(4)})
    t = rel.table
    table = pd.DataFrame({"strategy": t["label"], "kept per prompt": t["kept_per_prompt"].round(2),
                          "R² binned": t["r2_binned"].round(4), "R² plain": t["r2"].round(4)})
    return curve, table


def reliability_figure(rel: Reliability):
    fig, ax = C.figure(6.0, 3.6)
    c = rel.curve
    if c.empty:
        return C.empty_figure("no samples")
    yerr = np.vstack([c["score_mean"] - c["ci_low"], c["ci_high"] - c["score_mean"]]).clip(min=0)
    ax.errorbar(c["reward_mean"], c["score_mean"], yerr=yerr, marker="o", capsize=3, color="tab:blue")
    for x, y, n in zip(c["reward_mean"], c["score_mean"], c["count"]):
        ax.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set(xlabel="reward (bin mean)", ylabel="pass rate (95% interval)", ylim=(-0.02, 1.05),
           title=f"reliability: {rel.where}")
    return fig


def _reselect(data: Rollouts, step: int, strategy: str, seed: int) -> np.ndarray:
    """Apply ``select`` per prompt group (cached). Groups of different size N are selected bucket by bucket."""
    key = (step, strategy, seed)
    if key in data._kept_cache:
        return data._kept_cache[key]
    import torch

    from pfkit.rl.filtration import select

    g = data.step(step)
    out = np.zeros(len(g), dtype=bool)
    pos = np.arange(len(g))
    sizes = g.groupby("pid", sort=False)["sample_idx"].transform("size").to_numpy()
    for n in np.unique(sizes):
        rows = pos[sizes == n]  # sorted by (prompt_id, round, sample_idx): contiguous groups
        rewards = torch.from_numpy(g["reward"].to_numpy()[rows].reshape(-1, int(n)).copy())
        mask = select(rewards, strategy, generator=torch.Generator().manual_seed(seed))
        out[rows] = np.asarray(mask, dtype=bool).reshape(-1)
    data._kept_cache[key] = out
    return out


def _curves(data: Rollouts, strategy: str, seed: int, bins: int | None) -> pd.DataFrame:
    rows = []
    for step in data.steps:
        st = data.step_stats(step, strategy, seed, bins)
        rows.append({k: st[k] for k in ("step", "r2_all", "r2_kept_logged", "r2_kept", "pass_rate", "pass_rate_kept")})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ rendering
def _ids(flags: np.ndarray, idx: np.ndarray) -> str:
    chosen = [str(int(i)) for i in idx[flags]]
    return ", ".join(chosen) if chosen else "none"


def summary_markdown(data: Rollouts, step: int, prompt_id: str, strategy: str, seed: int, bins: int | None) -> str:
    g = data.step(step)
    k = data.kept(step, strategy, seed)
    sel = (g["pid"] == str(prompt_id)).to_numpy()
    idx = g["sample_idx"].to_numpy()[sel]
    st = data.step_stats(step, strategy, seed, bins)
    label = "logged" if strategy == "logged" else strategy
    lines = [
        f"**Step {step}, prompt {prompt_id}** ({sel.sum()} samples) · "
        f"kept (logged): **{_ids(g['kept'].to_numpy()[sel], idx)}**",
    ]
    if strategy != "logged":
        lines.append(f"strategy **{strategy}** would keep: **{_ids(k[sel], idx)}**")
    lines.append(
        f"Step {step} ({st['samples']} samples, {st['prompts']} prompts): "
        f"R² all = **{C.fmt(st['r2_all'])}** · R² kept (logged) = **{C.fmt(st['r2_kept_logged'])}**"
        + ("" if strategy == "logged" else f" · R² kept ({label}) = **{C.fmt(st['r2_kept'])}** ({st['n_kept']} kept)")
        + f" · pass rate = **{C.fmt(st['pass_rate'])}**"
    )
    return "\n\n".join(lines)


def sample_table(data: Rollouts, step: int, prompt_id: str, strategy: str, seed: int) -> pd.DataFrame:
    g = data.step(step)
    sel = (g["pid"] == str(prompt_id)).to_numpy()
    t = g.loc[sel, ["sample_idx", "reward", "score", "passed", "kept", "advantage"]].copy()
    t["reward_rank"] = (-t["reward"]).rank(method="first").astype(int)
    if strategy != "logged":
        t[f"kept ({strategy})"] = data.kept(step, strategy, seed)[sel]
    for c in ("reward", "score", "advantage"):
        t[c] = t[c].astype(float).round(4)
    return t.reset_index(drop=True)


def scatter_figure(data: Rollouts, step: int, strategy: str, seed: int, bins: int | None):
    # plain matplotlib, not seaborn: importing seaborn (and pyplot with it) cost seconds of server start
    g = data.step(step)
    k = data.kept(step, strategy, seed)
    st = data.step_stats(step, strategy, seed, bins)
    fig, ax = C.figure(6.0, 4.2)
    name = "logged" if strategy == "logged" else strategy
    reward, score = g["reward"].to_numpy(), g["score"].to_numpy()
    ax.scatter(reward[k], score[k], s=30, alpha=0.8, color="tab:blue", marker="o", label=f"kept ({name})")
    ax.scatter(reward[~k], score[~k], s=30, alpha=0.8, color="lightgray", marker="X", label="dropped")
    ax.set(xlabel="reward", ylabel="test score")
    for flags, colour, lab in ((np.ones(len(g), bool), "gray", "all"), (k, "tab:blue", "kept")):
        r, s = reward[flags], score[flags]
        if len(r) >= 2 and np.ptp(r) > 0:
            slope, icpt = np.polyfit(r, s, 1)
            xs = np.linspace(r.min(), r.max(), 2)
            ax.plot(xs, slope * xs + icpt, color=colour, lw=1.5, ls="--", label=f"fit {lab}")
    ax.set_title(f"step {step}: R² kept ({name}) = {C.fmt(st['r2_kept'])}, all = {C.fmt(st['r2_all'])}")
    ax.legend(loc="best", fontsize=8)
    return fig


def curves_figure(data: Rollouts, strategy: str, seed: int, bins: int | None, current: int | None = None):
    """R² (gaps where undefined, e.g. every kept sample has the same score) and pass rate per step."""
    from matplotlib.ticker import MaxNLocator

    cur = data.curves(strategy, seed, bins)
    fig, (a1, a2) = C.figure(9.0, 3.4, ncols=2)
    a1.plot(cur["step"], cur["r2_all"], marker=".", label="all samples", color="gray")
    a1.plot(cur["step"], cur["r2_kept_logged"], marker=".", label="kept (logged)", color="tab:blue")
    if strategy != "logged":
        a1.plot(cur["step"], cur["r2_kept"], marker=".", label=f"kept ({strategy})", color="tab:orange")
    a1.set(xlabel="step", ylabel="R² (test score ~ reward)", title="R² over steps", ylim=(-0.02, 1.02))
    a2.plot(cur["step"], cur["pass_rate"], marker=".", color="tab:green", label="all samples")
    a2.plot(cur["step"], cur["pass_rate_kept"], marker=".", color="tab:orange" if strategy != "logged" else "tab:blue",
            label=f"kept ({strategy})")
    a2.set(xlabel="step", ylabel="pass rate (all tests pass)", title="pass rate over steps", ylim=(-0.02, 1.02))
    for a in (a1, a2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        if current is not None:
            a.axvline(current, color="k", lw=0.8, alpha=0.4)
        a.legend(fontsize=8)
    return fig


def card_values(data: Rollouts, step: int, prompt_id: str, strategy: str, seed, slots: int) -> list[tuple]:
    """(shown, badge, response, label) for each of ``slots`` response cards: the prompt's samples, then empty."""
    g = data.step(step)
    sel = (g["pid"] == str(prompt_id)).to_numpy()
    ks = data.kept(step, strategy, int(seed or 0))[sel] if strategy != "logged" else [None] * sel.sum()
    rows = list(zip(g.loc[sel].itertuples(index=False), ks))[:slots]
    out = [(True, _badge(row, k, strategy), str(row.response), f"response {int(row.sample_idx)}") for row, k in rows]
    return out + [(False, "", "", "")] * (slots - len(out))


def _badge(row, kept_strategy: bool | None, strategy: str) -> str:
    # plain words, no emoji: lab machines and headless browsers often lack an emoji font
    tests = "**passed**" if row.passed else f"failed (score {row.score:.2f})"
    kept = "**KEPT**" if row.kept else "dropped"
    extra = ""
    if kept_strategy is not None:
        extra = f" · {strategy} would {'**keep**' if kept_strategy else 'drop'}"
    adv = "n/a" if pd.isna(row.advantage) else f"{row.advantage:+.3f}"
    return (f"**sample {int(row.sample_idx)}** · reward **{row.reward:.3f}**  \n"
            f"unit tests: {tests}  \n{kept} · advantage {adv}{extra}")


# ------------------------------------------------------------------------------------------------- app
def build_app(run_dir):
    return C.guarded(TITLE, lambda: _build(Rollouts(run_dir)))


def _warm_imports() -> None:
    """torch (pfkit.rl.filtration) takes seconds to import and the default view's R² needs it. scipy.stats
    (the reliability intervals) is left to the reliability view's first run, after the page is usable."""
    import pfkit.commands.analyze  # noqa: F401
    import pfkit.rl.filtration  # noqa: F401


def _build(data: Rollouts):
    import gradio as gr

    # Imported before serving, not in a background thread: a thread importing while the first page loads
    # holds the GIL and the page waited on it (13 s to a usable page right after start, issue #20). The
    # default view is computed here and sent inside the page, so a first visit needs no event round trip.
    _warm_imports()

    # ``?run=DIR`` opens a sibling run folder in this session (C.Runs)
    runs = C.Runs(data, Rollouts)
    home, get, open_other = runs.home, runs.get, runs.open

    first = data.steps[-1]
    prompts0 = data.prompts(first)
    pid0 = prompts0[0][1]
    ids0 = data.samples(first, pid0)
    n_slots = min(MAX_CARDS, int(data.df.groupby(["step", "pid"]).size().max()))
    stamp0 = (len(data.df), first)
    with gr.Blocks(title=TITLE) as demo:
        run_state = gr.State(home)
        header = gr.Markdown(f"# {TITLE}\n`{html.escape(home)}` · {len(data.df)} samples, {len(data.steps)} steps "
                             f"(steps {data.steps[0]}–{data.steps[-1]})", elem_id="header")
        if data.repeated:
            gr.Markdown(C.warning(
                f"{data.repeated} rows repeat a (step, prompt_id, sample_idx) already logged: the run wrote the "
                "same step more than once (a reused run folder, or a step counter that did not advance). "
                "Each repeat is shown as its own group, `<prompt_id> #k`."), elem_id="pfkit-warning")
        with gr.Row():
            step = gr.Dropdown(choices=data.steps, value=first, label="step", elem_id="step")
            prompt = gr.Dropdown(choices=prompts0, value=prompts0[0][1], label="prompt", elem_id="prompt")
            sample = gr.Dropdown(choices=ids0, value=ids0[0], label="sample",
                                 elem_id="sample", info="for the per-token view and the link")
            strategy = gr.Radio(choices=list(STRATEGIES), value="logged", label="filtration strategy",
                                info="logged = what the run kept; others re-apply select() to the logged rewards",
                                elem_id="strategy")
            seed = gr.Number(value=0, precision=0, label="seed (br)", elem_id="seed", minimum=0)
            bins = gr.Number(value=0, precision=0, label="R² bins (0 = per sample; paper: groups of similar reward)", elem_id="bins", minimum=0)
        with gr.Row():
            reload_btn = gr.Button("Reload run", size="sm", scale=0, min_width=120, elem_id="reload")
            status = gr.Markdown(elem_id="status")
            share = gr.Markdown(runs.link(home, step=first, prompt=pid0, sample=ids0[0]), elem_id="share")
        summary = gr.Markdown(summary_markdown(data, first, pid0, "logged", 0, None), elem_id="summary")
        prompt_code = gr.Code(str(data.row(first, pid0, ids0[0])["prompt"]), language="python", label="prompt",
                              interactive=False, elem_id="prompt-code", wrap_lines=True, max_lines=20)

        # a fixed set of response cards (the run's largest group), shown or hidden per prompt: part of the
        # page from the start (a gr.render block costs one more event round trip before anything shows)
        cards = []
        with gr.Row(elem_id="responses"):
            for shown, badge_v, text, label in card_values(data, first, pid0, "logged", 0, n_slots):
                with gr.Column(min_width=260, variant="panel", visible=shown) as col:
                    badge = gr.Markdown(badge_v)
                    # wrapped, at most 24 lines then scrolled: no line is cut in a narrow column
                    code = gr.Code(text, label=label, language="python", interactive=False, wrap_lines=True, lines=6,
                                   max_lines=24, elem_classes=["pfkit-response"])
                cards += [col, badge, code]

        def card_updates(d: Rollouts, step_v, prompt_v, strategy_v, seed_v) -> list:
            out = []
            for shown, badge_v, text, label in card_values(d, step_v, prompt_v, strategy_v, seed_v, n_slots):
                out += [gr.Column(visible=shown), badge_v, gr.Code(value=text, label=label)]
            return out

        with gr.Accordion("Per-token view of the chosen sample", open=True):
            token_mode = gr.Radio(choices=list(TOKEN_MODES), value=TOKEN_MODES[0], label="shade tokens by",
                                  elem_id="token-mode")
            tok0 = token_view(data, first, pid0, ids0[0], TOKEN_MODES[0])
            token_info = gr.Markdown(tok0[1], elem_id="token-info")
            tokens_html = gr.HTML(tok0[0], elem_id="tokens")
        table = gr.Dataframe(sample_table(data, first, pid0, "logged", 0), label="samples of this prompt",
                             interactive=False, elem_id="samples")
        with gr.Row():
            scatter = gr.Plot(label="reward vs test score (this step)", elem_id="scatter")
        curves = gr.Plot(label="R² and pass rate over steps", elem_id="curves")

        with gr.Accordion("Search all samples of the run", open=True):
            q_text, q_regex, q_fields = C.text_query_row(FIELDS)
            with gr.Row():
                q_rmin, q_rmax = C.bound_boxes("reward", "r")
                q_smin, q_smax = C.bound_boxes("score", "s")
            with gr.Row():
                q_kept = gr.Radio(choices=[C.ANY, KEPT, DROPPED], value=C.ANY, label="kept (logged)", elem_id="q-kept")
                q_passed = gr.Radio(choices=[C.ANY, PASSED, FAILED], value=C.ANY, label="unit tests",
                                    elem_id="q-passed")
                q_hack = C.hack_radio(data.has_hack, FLAGGED, CLEAN)
            search_btn, download, found_md, results, result_keys = C.results_block(
                "Search", "search", C.csv_file(csv_frame(data.df), CSV_NAME), search_markdown(data.df, len(data.df)),
                results_table(data.df), C.result_keys(data.df), table_id="results",
                label="matching samples (select a row to open it)")

        # closed at first (computed on load all the same): a closed accordion is drawn when opened, which
        # took ~2 s off a usable page on the shared 2-core machine (issue #20)
        with gr.Accordion("Reliability of the reward (paper Figure 1) and the strategy to train with", open=False,
                          elem_id="rel-section"):
            with gr.Row():
                rel_first = gr.Number(label="from step", value=data.steps[0], precision=0, elem_id="rel-first")
                rel_last = gr.Number(label="to step", value=data.steps[0], precision=0, elem_id="rel-last")
                rel_bins = gr.Number(label="reward bins", value=10, precision=0, minimum=2, elem_id="rel-bins")
                rel_file = gr.Textbox(label="or a samples file / run folder (e.g. OUT/sft_samples)", scale=2,
                                      elem_id="rel-file", placeholder="empty: this run's steps above")
                rel_btn = gr.Button("Compute", variant="primary", scale=0, min_width=120, elem_id="rel-compute")
            rel_md = gr.Markdown(elem_id="rel-summary")
            with gr.Row():
                rel_plot = gr.Plot(label="pass rate per reward bin", elem_id="rel-plot")
                with gr.Column():
                    rel_strat = gr.Dataframe(label="R² per strategy over these samples", interactive=False,
                                             elem_id="rel-table")
                    rel_curve = gr.Dataframe(label="reward bins", interactive=False, elem_id="rel-curve")

        def nbins(b):
            return int(b) if b and int(b) >= 2 else None

        def head_md(run_v):
            d = get(run_v)
            return (f"# {TITLE}\n`{html.escape(str(d.run.path))}` · {len(d.df)} samples, "
                    f"{len(d.steps)} steps (steps {d.steps[0]}–{d.steps[-1]})")

        def on_step(run_v, step_v, prompt_v):
            d = get(run_v)
            choices = d.prompts(step_v)
            keep = str(prompt_v) if str(prompt_v) in {p for _, p in choices} else choices[0][1]
            return gr.Dropdown(choices=choices, value=keep)

        def refresh(run_v, step_v, prompt_v, sample_v, strategy_v, seed_v, bins_v, mode_v):
            d = get(run_v)
            skip = (gr.skip(),) * (7 + len(cards))
            if step_v is None or prompt_v is None or int(step_v) not in d._by_step:
                return skip
            seed_i, b = int(seed_v or 0), nbins(bins_v)
            g = d.step(step_v)
            if str(prompt_v) not in set(g["pid"]):  # the step changed; the prompt follows
                return skip
            text = g.loc[g["pid"] == str(prompt_v), "prompt"].iloc[0]
            ids = d.samples(step_v, prompt_v)
            sample_i = int(sample_v) if sample_v is not None and int(sample_v) in ids else ids[0]
            html_v, info = token_view(d, int(step_v), str(prompt_v), sample_i, mode_v)
            return (summary_markdown(d, int(step_v), str(prompt_v), strategy_v, seed_i, b), str(text),
                    sample_table(d, int(step_v), str(prompt_v), strategy_v, seed_i),
                    gr.Dropdown(choices=ids, value=sample_i), html_v, info,
                    runs.link(run_v, step=int(step_v), prompt=prompt_v, sample=sample_i), *card_updates(d, step_v, prompt_v, strategy_v, seed_i))

        def on_tokens(run_v, step_v, prompt_v, sample_v, mode_v):
            if step_v is None or prompt_v is None or sample_v is None:
                return gr.skip(), gr.skip(), gr.skip()
            return (*token_view(get(run_v), int(step_v), str(prompt_v), int(sample_v), mode_v),
                    runs.link(run_v, step=int(step_v), prompt=prompt_v, sample=int(sample_v)))

        def refresh_scatter(run_v, step_v, strategy_v, seed_v, bins_v):
            # its own event after the sample panels: drawing a figure is the slow part of a refresh
            d = get(run_v)
            if step_v is None or int(step_v) not in d._by_step:
                return gr.skip()
            return scatter_figure(d, int(step_v), strategy_v, int(seed_v or 0), nbins(bins_v))

        def refresh_curves(run_v, strategy_v, seed_v, bins_v):  # all steps: independent of the chosen step
            return curves_figure(get(run_v), strategy_v, int(seed_v or 0), nbins(bins_v))

        def query(text, regex, fields, rmin, rmax, smin, smax, kept, passed, hack) -> Query:
            return Query(str(text or ""), bool(regex), fields, (rmin, rmax), (smin, smax), kept, passed, hack)

        def on_search(run_v, *q):
            d = get(run_v)
            try:
                found = d.search(query(*q))
            except C.BadQuery as e:
                return f"**Search not run:** {e}", gr.skip(), gr.skip(), gr.skip()
            return C.results_update(search_markdown(found, len(d.df)), results_table(found), csv_frame(found),
                                    CSV_NAME, C.result_keys(found))

        def search_on_load(run_v, *q):  # the page holds the served run's unfiltered list already
            d = get(run_v)
            if run_v == home and (len(d.df), d.steps[-1]) == stamp0:
                return (gr.skip(),) * 4
            return on_search(run_v, *q)

        def on_pick(run_v, keys, evt: gr.SelectData):
            """A results row -> that sample's step, prompt and sample (the rows listed by the last search)."""
            d = get(run_v)
            key = C.picked(evt, keys)
            if key is None:
                return gr.skip(), gr.skip(), gr.skip()
            st, pid, smp = key
            st, smp = int(st), int(smp)
            return (gr.Dropdown(choices=d.steps, value=st), gr.Dropdown(choices=d.prompts(st), value=str(pid)),
                    gr.Dropdown(choices=d.samples(st, pid), value=smp))

        def on_reliability(run_v, first_v, last_v, bins_v, file_v):
            d = get(run_v)
            try:
                if file_v and str(file_v).strip():
                    samples, where = load_sample_file(file_v), f"samples file {str(file_v).strip()}"
                else:
                    samples = d.steps_between(first_v, last_v)
                    lo, hi = int(samples["step"].min()), int(samples["step"].max())
                    where = f"step {lo}" if lo == hi else f"steps {lo}–{hi}"
                rel = reliability(samples, int(bins_v or 10), where)
            except C.BadQuery as e:
                return f"**Not computed:** {e}", gr.skip(), gr.skip(), gr.skip()
            curve_t, strat_t = reliability_tables(rel)
            return reliability_markdown(rel), reliability_figure(rel), strat_t, curve_t

        def from_url(request: gr.Request) -> tuple[str, str, int, str, int]:
            """The view named by the page URL (?run=&step=&prompt=&sample=); unknown values fall back."""
            p = C.query_params(request)
            run_v, msg = open_other(p.get("run", ""))
            d = get(run_v)
            st = d.steps[-1]
            try:
                if int(p.get("step", st)) in d._by_step:
                    st = int(p.get("step", st))
            except ValueError:
                pass
            choices = d.prompts(st)
            pid = p.get("prompt", "")
            pid = pid if pid in {c for _, c in choices} else choices[0][1]
            ids = d.samples(st, pid)
            try:
                smp = int(p["sample"]) if int(p.get("sample", -1)) in ids else ids[0]
            except ValueError:
                smp = ids[0]
            return run_v, msg, st, pid, smp

        def first_view(strategy_v, seed_v, bins_v, mode_v, request: gr.Request):
            run_v, msg, st, pid, smp = from_url(request)
            d = get(run_v)
            if (run_v == home and not msg and (len(d.df), d.steps[-1]) == stamp0 and (st, pid, smp) == (first, pid0, ids0[0])
                    and (strategy_v, int(seed_v or 0), int(bins_v or 0), mode_v) == ("logged", 0, 0, TOKEN_MODES[0])):
                return (gr.skip(),) * (len(url_outs) + len(outs))  # the page holds this view already
            return (run_v, head_md(run_v), msg, gr.Dropdown(choices=d.steps, value=st),
                    gr.Dropdown(choices=d.prompts(st), value=pid), gr.Dropdown(choices=d.samples(st, pid), value=smp),
                    gr.Number(value=d.steps[0]), gr.Number(value=d.steps[0]), gr.Radio(visible=d.has_hack),
                    *refresh(run_v, st, pid, smp, strategy_v, seed_v, bins_v, mode_v))

        # Gradio injects the request / the selection by annotation; this module's annotations are strings
        # (``from __future__ import annotations``) naming a local import, so give it the classes themselves.
        first_view.__annotations__["request"] = gr.Request
        on_pick.__annotations__["evt"] = gr.SelectData

        def on_reload(run_v):
            d = get(run_v)
            msg = C.reload(d) or (f"Reloaded at {time.strftime('%H:%M:%S')}: {len(d.df)} samples, "
                                  f"steps {d.steps[0]}–{d.steps[-1]}.")
            return gr.Dropdown(choices=d.steps, value=d.steps[-1]), msg, head_md(run_v)

        inputs = [run_state, step, prompt, sample, strategy, seed, bins, token_mode]
        outs = [summary, prompt_code, table, sample, tokens_html, token_info, share, *cards]
        scatter_inputs = [run_state, step, strategy, seed, bins]
        q_inputs = [q_text, q_regex, q_fields, q_rmin, q_rmax, q_smin, q_smax, q_kept, q_passed, q_hack]
        search_outs = [found_md, results, download, result_keys]
        rel_inputs = [run_state, rel_first, rel_last, rel_bins, rel_file]
        rel_outs = [rel_md, rel_plot, rel_strat, rel_curve]
        curve_inputs = [run_state, strategy, seed, bins]

        (step.change(on_step, [run_state, step, prompt], prompt).then(refresh, inputs, outs)
         .then(refresh_scatter, scatter_inputs, scatter))
        # prompt.input (a user's pick), not .change: a step change updates the prompt and refreshes itself
        gr.on([prompt.input, strategy.change, seed.change, bins.change], refresh, inputs, outs, trigger_mode=C.LATEST)
        gr.on([sample.input, token_mode.change], on_tokens, [run_state, step, prompt, sample, token_mode],
              [tokens_html, token_info, share], trigger_mode=C.LATEST)
        gr.on([strategy.change, seed.change, bins.change], refresh_scatter, scatter_inputs, scatter,
              trigger_mode=C.LATEST).then(refresh_curves, curve_inputs, curves)
        gr.on([search_btn.click, q_text.submit], on_search, [run_state, *q_inputs], search_outs,
              trigger_mode=C.LATEST)
        results.select(on_pick, [run_state, result_keys], [step, prompt, sample]).then(refresh, inputs, outs)
        gr.on([rel_btn.click, rel_file.submit], on_reliability, rel_inputs, rel_outs, trigger_mode=C.LATEST)
        # first view: what the URL names with its sample panels in one event (each chained event costs a
        # round trip, seconds on a loaded machine), then the plots, then the run-wide parts
        url_outs = [run_state, header, status, step, prompt, sample, rel_first, rel_last, q_hack]
        (demo.load(first_view, [strategy, seed, bins, token_mode], url_outs + outs)
         .then(refresh_scatter, scatter_inputs, scatter)
         .then(refresh_curves, curve_inputs, curves).then(search_on_load, [run_state, *q_inputs], search_outs).then(on_reliability, rel_inputs, rel_outs))
        (reload_btn.click(on_reload, run_state, [step, status, header])
         .then(on_step, [run_state, step, prompt], prompt).then(refresh, inputs, outs)
         .then(refresh_scatter, scatter_inputs, scatter).then(refresh_curves, curve_inputs, curves))
    return demo


def add_arguments(parser):
    C.add_arguments(parser, "rollouts.parquet (a PF-PPO or GRPO run)")


def main(args):
    return C.launch(build_app(args.run_dir), args)
