"""``pfkit study -c studies/NAME.yaml``: arms × paired seeds, in parallel, resumable; CIs and paired differences."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pfkit.study import LAUNCHERS

    parser.add_argument("-c", "--config", required=True, help="study YAML, e.g. studies/pfppo.yaml")
    parser.add_argument("--out", default=None, help="study folder (default runs/study_<name>[_quick])")
    parser.add_argument("--workers", type=int, default=None, help="parallel runs (default: the YAML's, else cores)")
    parser.add_argument("--quick", action="store_true", help="the YAML's smoke-test sizes (not a result)")
    parser.add_argument("--launcher", default="local", choices=LAUNCHERS,
                        help="local process pool; submitit-local / debug (submitit, for testing); slurm")
    parser.add_argument("--arms", default=None,
                        help="run only these arms (comma-separated names or globs, e.g. 'sft,exact_*'): a study in "
                             "stages; the summary covers every finished run")
    parser.add_argument("--summary", action="store_true",
                        help="only summarise: the runs finished in --out, else the study's stored table")


def main(args) -> int:
    from pfkit.cli import UserError
    from pfkit.study import format_summary, load_study, plot, run_study, summarize

    study = load_study(args.config, quick=args.quick)
    out = Path(args.out or f"runs/study_{study.name}{'_quick' if study.quick else ''}")
    if args.summary:
        import pandas as pd

        from pfkit.study import collect

        results, errors = (collect(study, out) if out.is_dir() else pd.DataFrame()), []
        if results.empty and study.table is not None and study.table.is_file() and not study.quick:
            print(f"(no runs in {out}: summarising the stored table {study.table})")
            results = pd.read_csv(study.table)
            out.mkdir(parents=True, exist_ok=True)
        elif results.empty:
            raise UserError(f"{out} has no finished runs and there is no stored table; run "
                            f"`pfkit study -c {args.config}` first")
    else:
        results, errors = run_study(study, out, workers=args.workers, launcher=args.launcher, arms=args.arms)
    if results.empty:
        raise UserError(f"no finished runs in {out}" + (f" ({len(errors)} failed)" if errors else ""))
    per_arm, paired = summarize(results, study)
    print(format_summary(study, results, per_arm, paired))
    per_arm.to_csv(out / "summary.csv", index=False)
    paired.to_csv(out / "paired.csv", index=False)
    fig = plot(study, results, paired, out / f"{study.name}.png")
    print(f"\nwrote {out / 'results.parquet'}, {out / 'summary.csv'}, {out / 'paired.csv'}"
          + (f", {fig}" if fig else ""))
    if errors:
        print(f"\n{len(errors)} run(s) failed; re-run the same command to retry them:", *errors, sep="\n  ")
        return 1
    return 0
