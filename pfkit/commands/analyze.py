"""``pfkit analyze-filtration RUN_DIR|FILE.parquet``: which PF-PPO strategy to train with.

Reads logged samples (columns prompt_id, sample_idx, reward, score; step optional), re-applies each
filtration strategy per prompt to the *logged rewards*, and reports the R² between reward and actual
(unit-test) score over what each strategy would keep (PF-PPO paper §4 "Weight choice": pick the
strategy whose kept samples' rewards track the true score best). Random strategies (BR) are scored by
their expected kept set (samples weighted by their inclusion probability), so the table has no sampling
noise. By default only the first logged step is used: the paper computes R² on the SFT policy, before
PPO changes the sample distribution.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

STRATEGY_LABELS = {"none": "none (PPO-M)", "bon": "BoN", "br": "BR", "bw": "BW"}
CAVEAT = ("R² is a guide, not a guarantee (the paper: 'not a perfect tool'): it ignores how many samples a "
          "strategy keeps and what the policy learns from them; BoN keeps only top-reward samples, so its "
          "R² rests on few, similar points.")


def add_arguments(parser):
    parser.add_argument("path", help="a run folder with rollouts.parquet, or a parquet file/folder of samples")
    parser.add_argument("--strategies", default="none,bon,br,bw",
                        help="comma-separated strategies to compare (default: none,bon,br,bw)")
    parser.add_argument("--steps", default="first",
                        help="which logged steps to use: 'first' (default: the starting policy, as in the "
                             "paper), 'all', or a comma-separated list of step numbers")
    parser.add_argument("--bins", type=int, default=10,
                        help="groups for the paper's binned R² column (default 10)")
    parser.add_argument("--plot", default=None,
                        help="where to save the plot (default: RUN_DIR/filtration_r2.png or beside the file)")


def load_samples(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """The samples table and the folder to write outputs into. Raises UserError with a clear message."""
    from pfkit.cli import UserError
    from pfkit.runs import RunDir, RunFolderError

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p} does not exist; pass a run folder (with rollouts.parquet) or a .parquet file")
    try:
        if p.suffix == ".parquet":
            df = pd.read_parquet(p)
            out_dir = p.parent
        elif p.is_dir():
            run = RunDir(p)
            if not run.has_table("rollouts"):
                subs = sorted(str(d) for d in p.iterdir() if d.is_dir() and RunDir(d).has_table("rollouts"))
                hint = f" It has sub-runs that do: {', '.join(subs)}; pass one of them." if subs else ""
                raise UserError(f"{p} has no rollouts.parquet (not a PF-PPO/GRPO run folder).{hint}")
            df = run.read("rollouts")
            out_dir = p
        else:
            raise UserError(f"{p} is neither a run folder nor a .parquet file")
    except (RunFolderError, OSError, ValueError) as e:
        if isinstance(e, UserError):
            raise
        raise UserError(f"could not read samples from {p}: {str(e).splitlines()[0]}") from None
    need = {"prompt_id", "reward", "score"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise UserError(f"{p} lacks column(s) {', '.join(missing)}; expected the rollouts table "
                        f"(step, prompt_id, sample_idx, reward, score, ...)")
    df = df.dropna(subset=["reward", "score"])
    if df.empty:
        raise UserError(f"{p} has no samples with both a reward and a score")
    return df, out_dir


def _pick_steps(df: pd.DataFrame, steps: str) -> pd.DataFrame:
    from pfkit.cli import UserError

    if "step" not in df.columns or steps == "all":
        return df
    if steps == "first":
        return df[df["step"] == df["step"].min()]
    try:
        wanted = {int(s) for s in steps.split(",")}
    except ValueError:
        raise UserError(f"--steps must be 'first', 'all' or step numbers like 0,5; got {steps!r}") from None
    sub = df[df["step"].isin(wanted)]
    if sub.empty:
        raise UserError(f"no samples at steps {sorted(wanted)}; logged steps: {sorted(df['step'].unique())[:20]}")
    return sub


def strategy_table(df: pd.DataFrame, strategies=("none", "bon", "br", "bw"), bins: int | None = 10) -> pd.DataFrame:
    """R² of each strategy's (expected) kept set over per-prompt groups of ``df``.

    Adds a column ``p_<strategy>`` (inclusion probability) to ``df`` in place for plotting.
    """
    import torch

    from pfkit.rl.filtration import inclusion_probs, r_squared, resolve

    keys = ["step", "prompt_id"] if "step" in df.columns else ["prompt_id"]
    rows = []
    for s in strategies:
        resolve(s)
        probs = pd.Series(np.nan, index=df.index)
        for _, g in df.groupby(keys, sort=False):
            g = g.sort_values("sample_idx") if "sample_idx" in g.columns else g
            p = inclusion_probs(torch.tensor(g["reward"].to_numpy(float))[None], s)[0].numpy()
            probs.loc[g.index] = p
        df[f"p_{s}"] = probs
        w = probs.to_numpy()
        rows.append({
            "strategy": s,
            "label": STRATEGY_LABELS.get(s, s),
            "kept_per_prompt": float(w.sum() / df.groupby(keys).ngroups),
            "r2": r_squared(df["reward"].to_numpy(), df["score"].to_numpy(), weights=w),
            "r2_binned": (r_squared(df["reward"].to_numpy(), df["score"].to_numpy(), bins=bins, weights=w)
                          if bins else float("nan")),
            "kept_score": float(np.average(df["score"], weights=w)),
            "kept_reward": float(np.average(df["reward"], weights=w)),
        })
    return pd.DataFrame(rows)


def recommend(table: pd.DataFrame, binned: bool = False) -> str | None:
    """The strategy with the highest R² (``binned``: the paper's grouped R², column ``r2_binned``)."""
    col = "r2_binned" if binned else "r2"
    ok = table.dropna(subset=[col])
    if ok.empty:
        return None
    return str(ok.sort_values(col, ascending=False, kind="stable").iloc[0]["strategy"])


def plot(df: pd.DataFrame, table: pd.DataFrame, path: Path) -> Path:
    """Reward vs score per strategy: kept (always), kept at random (BR's others), dropped; binned means."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    strategies = list(table["strategy"])
    fig, axes = plt.subplots(1, len(strategies), figsize=(3.6 * len(strategies), 3.4), sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    jitter = rng.uniform(-0.06, 0.06, len(df))
    palette = {"kept": "tab:green", "random": "tab:orange", "dropped": "lightgray"}
    for ax, (_, row) in zip(axes[0], table.iterrows()):
        p = df[f"p_{row['strategy']}"].to_numpy()
        region = np.where(p >= 1, "kept", np.where(p > 0, "random", "dropped"))
        sns.scatterplot(x=df["reward"].to_numpy(), y=df["score"].to_numpy() + jitter, hue=region,
                        hue_order=[k for k in palette if k in set(region)], palette=palette, s=12,
                        linewidth=0, alpha=0.7, ax=ax, legend=True)
        kept = p > 0
        if kept.sum() >= 2:
            q = pd.qcut(df["reward"][kept], q=min(8, int(kept.sum())), duplicates="drop")
            means = df[kept].groupby(q, observed=True)[["reward", "score"]].mean()
            sns.lineplot(x=means["reward"], y=means["score"], marker="o", color="black", ax=ax)
        ax.set_title(f"{row['label']}: R²={row['r2']:.3f}")
        ax.set_xlabel("reward (RM)")
        ax.set_ylabel("score (unit tests)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'strategy':<14}{'kept/prompt':>12}{'R²':>9}{'R² binned':>11}{'kept score':>12}{'kept reward':>13}"]
    for _, r in table.iterrows():
        def f(x, w=9):
            return f"{x:>{w}.3f}" if not (isinstance(x, float) and math.isnan(x)) else f"{'n/a':>{w}}"
        lines.append(f"{r['label']:<14}{r['kept_per_prompt']:>12.2f}{f(r['r2'])}{f(r['r2_binned'], 11)}"
                     f"{f(r['kept_score'], 12)}{f(r['kept_reward'], 13)}")
    return "\n".join(lines)


def parse_strategies(text: str) -> list[str]:
    """A comma-separated --strategies value, each name checked (UserError naming the bad one)."""
    from pfkit.cli import UserError
    from pfkit.rl.filtration import resolve

    strategies = [s.strip().lower() for s in text.split(",") if s.strip()]
    for s in strategies:
        try:
            resolve(s)
        except ValueError as e:
            raise UserError(f"--strategies: {e}") from None
    return strategies


def main(args) -> int:
    strategies = parse_strategies(args.strategies)
    df, out_dir = load_samples(args.path)
    df = _pick_steps(df, args.steps).reset_index(drop=True)
    table = strategy_table(df, strategies, bins=args.bins)
    steps = sorted(df["step"].unique()) if "step" in df.columns else []
    where = f"step {steps[0]}" if len(steps) == 1 else (f"{len(steps)} steps" if steps else "all samples")
    print(f"R² between reward and unit-test score over each strategy's kept samples "
          f"({len(df)} samples, {df.groupby('prompt_id').ngroups} prompts, {where})")
    print(format_table(table))
    best = recommend(table)
    if best is None:
        print("recommendation: none (R² undefined: the scores do not vary over the kept samples)")
    else:
        print(f"recommendation: {best} (highest R²). Caveat: {CAVEAT}")
    path = Path(args.plot) if args.plot else out_dir / "filtration_r2.png"
    plot(df, table, path)
    print(f"plot: {path}")
    return 0
