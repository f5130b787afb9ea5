"""``pfkit analyze-filtration RUN_DIR|FILE.parquet``: which PF-PPO strategy to train with.

The table and the recommendation are ``pfkit.rl.filtration.strategy_table`` / ``recommend``; this command
reads the samples, prints them and saves the plot. It reads logged samples (columns prompt_id, sample_idx, reward, score; step optional), re-applies each
filtration strategy per prompt to the *logged rewards*, and reports the R² between reward and actual
(unit-test) score over what each strategy would keep (PF-PPO paper §4 "Weight choice": pick the
strategy whose kept samples' rewards track the true score best). Random strategies (BR) are scored by
their expected kept set (samples weighted by their inclusion probability), so the table has no sampling
noise. By default only the first logged step is used: the paper computes R² on the SFT policy, before
PPO changes the sample distribution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pfkit.errors import UserError
from pfkit.rl.filtration import (
    CAVEAT,
    format_curve,
    format_table,
    parse_strategies,
    recommend,
    reliability_curve,
    strategy_table,
)

__all__ = ["add_arguments", "load_samples", "main", "plot", "strategy_table", "recommend", "format_table"]

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


def main(args) -> int:
    try:
        strategies = parse_strategies(args.strategies)
    except ValueError as e:
        raise UserError(f"--strategies: {e}") from None
    df, out_dir = load_samples(args.path)
    df = _pick_steps(df, args.steps).reset_index(drop=True)
    table = strategy_table(df, strategies, bins=args.bins)
    steps = sorted(df["step"].unique()) if "step" in df.columns else []
    where = f"step {steps[0]}" if len(steps) == 1 else (f"{len(steps)} steps" if steps else "all samples")
    print(f"R² between reward and unit-test score over each strategy's kept samples "
          f"({len(df)} samples, {df.groupby('prompt_id').ngroups} prompts, {where})")
    print(format_table(table))
    curve = reliability_curve(df["reward"], df["score"], bins=args.bins or 10)
    print(f"\nreliability (all {len(df)} samples): unit-test pass rate per reward bin, 95% CI "
          f"(Clopper-Pearson for pass/fail scores)")
    print(format_curve(curve))
    best = recommend(table)
    if best is None:
        print("recommendation: none (R² undefined: the scores do not vary over the kept samples)")
    else:
        plain = recommend(table, by="r2")
        print(f"recommendation: {best} (highest binned R², the paper's criterion"
              + (f"; by plain per-sample R² it would be {plain}" if plain != best else "; plain R² agrees")
              + f"). Caveat: {CAVEAT}")
    path = Path(args.plot) if args.plot else out_dir / "filtration_r2.png"
    plot(df, table, path)
    print(f"plot: {path}")
    return 0
