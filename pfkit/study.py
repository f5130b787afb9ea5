"""Studies: does a method work here? A grid of arms × paired seeds, run in parallel, resumable, summarised.

A study YAML (``studies/NAME.yaml``) names a *job* (``module:function``), a base config (a LightningCLI
YAML; the one config path the CLI and the demos use), the arms (each a set of dotted config overrides and
job arguments) and the seeds. Every (arm, seed) is one normal run folder ``OUT/<arm>/seed_<k>/``; a run
whose ``result.json`` exists is finished and skipped, so a study interrupted at any point resumes by
running the same command again (a half-written run folder is cleared and that run starts over).

The summary is the kit's answer to "does this work?": per arm, mean and 95% CI over seeds (Student t,
``scipy.stats``); per arm, the **paired** difference against the baseline arm on the same seeds (every
arm of one seed shares the seed's data order and initial sampling, so pairing removes that variance),
with its 95% CI and paired t-test p-value. The number of seeds and evaluation samples is printed with
every table.

Launchers: ``local`` (a process pool on this machine, one fresh process per run), ``submitit-local`` and
``debug`` (submitit's local and in-process executors: what the tests use), and ``slurm`` (submitit on a
cluster, parameters from the YAML's ``slurm:`` mapping). No home-made scheduler.
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
import importlib
import itertools
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pfkit.errors import UserError

STUDY_KEYS = {
    "name": "study name (used for the output folder)",
    "prediction": "what the paper predicts, stated before running",
    "description": "free text",
    "job": "module:function called once per (arm, seed) with a RunSpec; returns flat metrics",
    "config": "base LightningCLI YAML (or a list, merged in order), relative to the study file's project root",
    "overrides": "dotted config keys applied to every arm",
    "args": "job arguments that are not config keys (every arm)",
    "seeds": "list of seeds (paired across arms)",
    "baseline": "arm name, or a factor mapping (paired within the other factors)",
    "metrics": "metrics shown in the summary (first is plotted)",
    "workers": "parallel runs (default: CPU cores)",
    "table": "where a full study writes its results table (CSV, committed)",
    "arms": "explicit arms: name -> {overrides, args, factors}",
    "grid": "factor -> level -> {overrides, args}; the product becomes arms",
    "quick": "smoke-test sizes: {seeds, overrides, args, arms}",
    "slurm": "submitit slurm parameters (partition, gpus_per_node, timeout_min, ...)",
}
ARM_KEYS = ("overrides", "args", "factors")
QUICK_KEYS = ("seeds", "overrides", "args", "arms")
LAUNCHERS = ("local", "submitit-local", "debug", "slurm")


@dataclass
class RunSpec:
    """Everything one run of a study needs; what a job function receives."""

    arm: str
    seed: int
    run_dir: Path
    config: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)
    quick: bool = False


@dataclass
class Arm:
    name: str
    overrides: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    factors: dict = field(default_factory=dict)


@dataclass
class Study:
    name: str
    job: str
    path: Path | None = None
    prediction: str = ""
    config: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    args: dict = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])
    baseline: str | dict | None = None
    metrics: list[str] = field(default_factory=list)
    workers: int | None = None
    table: Path | None = None
    arms: list[Arm] = field(default_factory=list)
    slurm: dict = field(default_factory=dict)
    quick: bool = False

    def config_for(self, arm: Arm) -> dict:
        """The base config with the study's and then the arm's overrides applied (a fresh copy)."""
        cfg = copy.deepcopy(self.config)
        for key, value in {**self.overrides, **arm.overrides}.items():
            set_dotted(cfg, key, value)
        return cfg

    def runs(self, out: Path) -> list[RunSpec]:
        """One RunSpec per (arm, seed); the config is the base merged with study and arm overrides."""
        specs = []
        # seed-major: an interrupted study has every arm at the same seeds, so its paired tables stay usable
        for seed in self.seeds:
            for arm in self.arms:
                cfg = self.config_for(arm)
                run_dir = out / arm.name / f"seed_{seed}"
                cfg["seed_everything"] = int(seed)
                cfg["run_dir"] = str(run_dir)
                specs.append(RunSpec(arm.name, int(seed), run_dir, cfg, {**self.args, **arm.args},
                                     dict(arm.factors), self.quick))
        return specs

    def baseline_of(self, arm: Arm) -> str | None:
        """The arm this one is paired against (None for the baseline itself or when there is none)."""
        if self.baseline is None:
            return None
        if isinstance(self.baseline, str):
            return None if arm.name == self.baseline else self.baseline
        target = {**arm.factors, **self.baseline}
        if target == arm.factors:
            return None
        for other in self.arms:
            if other.factors == target:
                return other.name
        return None


# ------------------------------------------------------------------------------------------ loading
def set_dotted(cfg: dict, key: str, value: Any) -> None:
    """``set_dotted(cfg, "model.init_args.lr", 1e-5)``: create intermediate mappings as needed."""
    node = cfg
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def merge_configs(paths: Sequence[str | os.PathLike]) -> dict:
    """LightningCLI YAMLs merged in order as ``pfkit fit -c a.yaml -c b.yaml`` does: a later file's mapping
    keys override the earlier ones key by key, any other value (lists included) replaces the earlier one."""
    def merge(base: dict, over: Mapping) -> dict:
        for k, v in over.items():
            base[k] = merge(dict(base[k]), v) if isinstance(v, Mapping) and isinstance(base.get(k), dict) else v
        return base

    cfg: dict = {}
    for p in paths:
        cfg = merge(cfg, yaml.safe_load(Path(p).read_text()) or {})
    return cfg


def _check_keys(given: Mapping, allowed, where: str) -> None:
    for key in given:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; valid keys: {', '.join(allowed)}"
            raise UserError(f"{where}: unknown key `{key}`{hint}")


def _project_root(path: Path) -> Path:
    """Relative paths in a study file are relative to the folder holding ``studies/`` (the project)."""
    return path.parent.parent if path.parent.name == "studies" else path.parent


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UserError(f"{where} must be a mapping, got {type(value).__name__}")
    return dict(value)


def load_study(path: str | os.PathLike, quick: bool = False) -> Study:
    """Read and validate a study YAML; ``quick`` applies its ``quick:`` section (smoke-test sizes)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"study file {path} not found; give a YAML such as studies/pfppo.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, Mapping):
        raise UserError(f"{path} must hold a mapping of study keys ({', '.join(STUDY_KEYS)})")
    _check_keys(raw, STUDY_KEYS, str(path))
    if "job" not in raw:
        raise UserError(f"{path}: `job` is required (module:function, e.g. pfkit.study:fit_job)")
    root = _project_root(path.resolve())

    cfg_paths = []  # one base config, or a list merged in order (as repeated `pfkit fit -c`)
    for name in ([raw["config"]] if isinstance(raw.get("config"), str) else raw.get("config") or []):
        cfg_path = Path(name) if Path(name).is_absolute() else root / name
        if not cfg_path.is_file():
            raise UserError(f"{path}: base config {name} not found (looked at {cfg_path})")
        cfg_paths.append(cfg_path)
    config = merge_configs(cfg_paths)

    arms = []
    for name, spec in _mapping(raw.get("arms"), "arms").items():
        spec = _mapping(spec, f"arm {name}")
        _check_keys(spec, ARM_KEYS, f"{path}: arm {name}")
        arms.append(Arm(str(name), _mapping(spec.get("overrides"), f"arm {name} overrides"),
                        _mapping(spec.get("args"), f"arm {name} args"),
                        _mapping(spec.get("factors"), f"arm {name} factors")))
    grid = _mapping(raw.get("grid"), "grid")
    if grid:
        factors = list(grid)
        levels = [list(_mapping(grid[f], f"grid factor {f}").items()) for f in factors]
        for combo in itertools.product(*levels):
            arm = Arm(",".join(f"{f}={lv}" for f, (lv, _) in zip(factors, combo)),
                      factors={f: str(lv) for f, (lv, _) in zip(factors, combo)})
            for f, (lv, spec) in zip(factors, combo):
                spec = _mapping(spec, f"grid {f}={lv}")
                _check_keys(spec, ARM_KEYS[:2], f"{path}: grid {f}={lv}")
                arm.overrides.update(_mapping(spec.get("overrides"), "overrides"))
                arm.args.update(_mapping(spec.get("args"), "args"))
            arms.append(arm)
    if not arms:
        raise UserError(f"{path}: no arms (give `arms:` or `grid:`)")
    names = [a.name for a in arms]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: arm names repeat: {sorted({n for n in names if names.count(n) > 1})}")

    study = Study(
        name=str(raw.get("name") or path.stem), job=str(raw["job"]), path=path,
        prediction=str(raw.get("prediction") or "").strip(), config=config,
        overrides=_mapping(raw.get("overrides"), "overrides"), args=_mapping(raw.get("args"), "args"),
        seeds=[int(s) for s in raw.get("seeds") or [0]], baseline=raw.get("baseline"),
        metrics=list(raw.get("metrics") or []), workers=raw.get("workers"),
        table=(root / raw["table"]) if raw.get("table") else None, arms=arms,
        slurm=_mapping(raw.get("slurm"), "slurm"),
    )
    if isinstance(study.baseline, str) and study.baseline not in names:
        close = difflib.get_close_matches(study.baseline, names, n=1)
        raise UserError(f"{path}: baseline `{study.baseline}` is not an arm"
                        + (f"; did you mean `{close[0]}`?" if close else f"; arms: {', '.join(names)}"))
    if quick:
        q = _mapping(raw.get("quick"), "quick")
        _check_keys(q, QUICK_KEYS, f"{path}: quick")
        study.quick = True
        study.seeds = [int(s) for s in q.get("seeds") or study.seeds[:1]]
        study.overrides.update(_mapping(q.get("overrides"), "quick overrides"))
        study.args.update(_mapping(q.get("args"), "quick args"))
        if q.get("arms"):
            unknown = [a for a in q["arms"] if a not in names]
            if unknown:
                raise UserError(f"{path}: quick arms {unknown} are not arms of the study")
            keep = set(q["arms"])
            study.arms = [a for a in study.arms if a.name in keep]
    return study


def resolve_job(job: str) -> Callable[[RunSpec], dict]:
    module, _, attr = job.partition(":")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"study job `{job}` cannot be imported ({e}); give module:function") from None
    return fn


# ------------------------------------------------------------------------------------------ running
def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def execute(spec: dict, job: str, threads: int | None = None) -> dict:
    """Run one (arm, seed) in this process and write its ``result.json``; the unit a launcher runs."""
    from pfkit.cli import quiet

    quiet()  # a worker is a fresh process: without this, jobs that build their own Trainer print its chatter
    if threads:
        import torch

        torch.set_num_threads(threads)
    run = RunSpec(**{**spec, "run_dir": Path(spec["run_dir"])})
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    start = time.time()
    from pfkit.callbacks import RunSummary

    RunSummary.silenced = True  # the study's own per-run line says it
    try:
        metrics = resolve_job(job)(run)
    except BaseException:
        (run.run_dir / "error.txt").write_text(traceback.format_exc())
        raise
    finally:
        RunSummary.silenced = False
    if not isinstance(metrics, Mapping):
        raise TypeError(f"study job {job} returned {type(metrics).__name__}, expected a dict of metrics")
    bad = {k: type(v).__name__ for k, v in metrics.items() if not isinstance(v, int | float | str | type(None))}
    if bad:
        raise TypeError(f"study job {job} returned non-scalar metrics {bad}; return flat numbers/strings")
    row = {"arm": run.arm, "seed": run.seed, **{f"factor_{k}": v for k, v in run.factors.items()},
           **{k: (math.nan if v is None else v) for k, v in metrics.items()},
           "wall_s": round(time.time() - start, 2)}
    _write_json_atomic(run.run_dir / "result.json", row)
    return row


def _launch(pending: list[RunSpec], study: Study, out: Path, workers: int, launcher: str, log) -> list[str]:
    """Run the pending specs; returns the error lines of runs that failed (the others are on disk)."""
    threads = max(1, (os.cpu_count() or 1) // max(1, min(workers, len(pending))))
    payload = [(asdict(s) | {"run_dir": str(s.run_dir)}) for s in pending]
    errors, done, t0 = [], 0, time.time()
    # a bar over the runs on a terminal (disable=None: off when stderr is not a TTY, e.g. tests, CI logs);
    # the per-run lines print above it
    from tqdm import tqdm  # not tqdm.auto: without ipywidgets a notebook would get a warning on stderr

    bar = tqdm(total=len(pending), desc=f"study {study.name}", unit="run", disable=None, leave=False)

    def say(msg):
        with tqdm.external_write_mode():
            log(msg)

    def report(spec: RunSpec, row: dict | None, err: BaseException | None):
        nonlocal done
        done += 1
        bar.update(1)
        what = f"{spec.arm} seed {spec.seed}"
        if err is not None:
            msg = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            errors.append(f"{what}: {msg} (see {spec.run_dir / 'error.txt'})")
            say(f"study {study.name}: [{done}/{len(pending)}] {what} FAILED: {msg}")
        else:
            shown = {k: row[k] for k in study.metrics[:2] if k in row}
            vals = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            say(f"study {study.name}: [{done}/{len(pending)}] {what} done in {row['wall_s']:.0f} s"
                f"{': ' + vals if vals else ''} ({time.time() - t0:.0f} s elapsed)")

    if launcher == "local":
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                 max_tasks_per_child=1) as pool:
            futures = {pool.submit(execute, p, study.job, threads): s for p, s in zip(payload, pending)}
            for fut in as_completed(futures):
                err = fut.exception()
                report(futures[fut], None if err else fut.result(), err)
        bar.close()
        return errors

    import submitit

    cluster = {"submitit-local": "local", "debug": "debug", "slurm": "slurm"}[launcher]
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    params = dict(study.slurm) if launcher == "slurm" else {}
    params.setdefault("timeout_min", 120)
    executor.update_parameters(**params)
    limit = len(pending) if launcher == "slurm" else workers  # slurm schedules itself
    queue, running = list(zip(payload, pending)), []
    while queue or running:
        while queue and len(running) < limit:
            p, s = queue.pop(0)
            running.append((executor.submit(execute, p, study.job, threads), s))
        for job, s in list(running):
            if job.done():
                running.remove((job, s))
                try:
                    report(s, job.result(), None)
                except Exception as e:  # submitit wraps the child's exception
                    report(s, None, e)
        if running:
            time.sleep(0.2)
    bar.close()
    return errors


def collect(study: Study, out: Path) -> pd.DataFrame:
    """The results table: one row per finished run of this study's grid (in grid order)."""
    rows = []
    order = {a.name: i for i, a in enumerate(study.arms)}
    for spec in sorted(study.runs(out), key=lambda r: (order[r.arm], r.seed)):
        result = spec.run_dir / "result.json"
        if result.is_file():
            rows.append(json.loads(result.read_text()))
    return pd.DataFrame(rows)


def select_arms(study: Study, patterns: str | Sequence[str] | None) -> set[str]:
    """The arm names matching any of ``patterns`` (comma-separated or a list; shell globs such as
    ``exact_*``); every arm when None. A pattern that matches nothing is an error (with the arm names)."""
    names = [a.name for a in study.arms]
    if patterns is None:
        return set(names)
    pats = [p.strip() for p in (patterns.split(",") if isinstance(patterns, str) else patterns) if p.strip()]
    chosen = set()
    for pat in pats:
        hit = fnmatch.filter(names, pat)
        if not hit:
            raise UserError(f"--arms: `{pat}` matches no arm of study {study.name}; arms: {', '.join(names)}")
        chosen.update(hit)
    return chosen


def run_study(study: Study, out: str | os.PathLike, workers: int | None = None, launcher: str = "local",
              log: Callable[[str], None] = print, arms: str | Sequence[str] | None = None,
              ) -> tuple[pd.DataFrame, list[str]]:
    """Run every unfinished (arm, seed) of ``study`` into ``out`` (only the arms matching ``arms``, e.g.
    ``"sft,exact_*"``, to run a study in stages); returns (results table of every finished run, errors).
    The committed table is written once the whole grid has finished, whichever stage finishes it."""
    if launcher not in LAUNCHERS:
        raise UserError(f"unknown launcher `{launcher}`; choose from {', '.join(LAUNCHERS)}")
    chosen = select_arms(study, arms)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    resolve_job(study.job)  # fail before launching anything
    specs = study.runs(out)
    pending = [s for s in specs if not (s.run_dir / "result.json").is_file() and s.arm in chosen]
    for s in pending:  # a run killed half-way starts over from an empty folder
        if s.run_dir.exists():
            shutil.rmtree(s.run_dir)
    workers = max(1, int(workers or study.workers or os.cpu_count() or 1))
    finished = sum((s.run_dir / "result.json").is_file() for s in specs)
    log(f"study {study.name}: {len(study.arms)} arms × {len(study.seeds)} seeds = {len(specs)} runs; "
        f"{finished} finished earlier (skipped), {len(pending)} to run"
        f"{'' if arms is None else f' (arms {sorted(chosen)})'} "
        f"({launcher}, {min(workers, max(1, len(pending)))} in parallel) -> {out}")
    errors = _launch(pending, study, out, workers, launcher, log) if pending else []
    results = collect(study, out)
    if not results.empty:
        results.to_parquet(out / "results.parquet", index=False)
    complete = len(results) == len(specs)
    if complete and study.table is not None and not study.quick:
        study.table.parent.mkdir(parents=True, exist_ok=True)
        results.to_csv(study.table, index=False)
        log(f"study {study.name}: results table written to {study.table}")
    return results, errors


# ------------------------------------------------------------------------------------------ statistics
def mean_ci(values, confidence: float = 0.95) -> tuple[int, float, float, float]:
    """(n, mean, low, high): the Student-t interval of the mean (scipy). NaNs are dropped; n < 2 has no CI."""
    from scipy import stats

    s = pd.Series(values, dtype=float).dropna()
    n, mean = len(s), float(s.mean()) if len(s) else math.nan
    if n < 2:
        return n, mean, math.nan, math.nan
    sem = float(stats.sem(s))
    if sem == 0:
        return n, mean, mean, mean
    low, high = stats.t.interval(confidence, n - 1, loc=mean, scale=sem)
    return n, mean, float(low), float(high)


def summarize(results: pd.DataFrame, study: Study, confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-arm means with CIs, and paired (by seed) differences against each arm's baseline."""
    from scipy import stats

    metrics = study.metrics or [c for c in results.columns if c not in ("arm", "seed", "wall_s", "n_eval")
                                and not c.startswith("factor_") and pd.api.types.is_numeric_dtype(results[c])]
    per_arm, paired = [], []
    by_arm = {a: g.set_index("seed") for a, g in results.groupby("arm", sort=False)} if len(results) else {}
    for arm in study.arms:
        if arm.name not in by_arm:
            continue
        g = by_arm[arm.name]
        n_eval = g["n_eval"].dropna() if "n_eval" in g else pd.Series(dtype=float)
        for m in metrics:
            if m not in g:
                continue
            n, mean, lo, hi = mean_ci(g[m], confidence)
            per_arm.append({"arm": arm.name, **arm.factors, "metric": m, "seeds": len(g), "n": n, "mean": mean,
                            "ci_low": lo, "ci_high": hi,
                            "n_eval": float(n_eval.median()) if len(n_eval) else math.nan})
        base = study.baseline_of(arm)
        if base is None or base not in by_arm:
            continue
        b = by_arm[base]
        for m in metrics:
            if m not in g or m not in b or b[m].isna().all():  # e.g. a training metric of an untrained baseline
                continue
            diff = (g[m] - b[m].reindex(g.index)).dropna()
            n, mean, lo, hi = mean_ci(diff, confidence)
            p = float(stats.ttest_1samp(diff, 0.0).pvalue) if n >= 2 and diff.std() > 0 else math.nan
            paired.append({"arm": arm.name, **arm.factors, "baseline": base, "metric": m, "pairs": n,
                           "mean_diff": mean, "ci_low": lo, "ci_high": hi, "p": p})
    return pd.DataFrame(per_arm), pd.DataFrame(paired)


def _fmt(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def format_summary(study: Study, results: pd.DataFrame, per_arm: pd.DataFrame, paired: pd.DataFrame,
                   confidence: float = 0.95) -> str:
    """The printed tables: every figure with its interval, seeds and evaluation samples."""
    pct = f"{confidence:.0%}"
    w = max([len(a.name) for a in study.arms] + [10]) + 2
    lines = [f"study {study.name}" + (" (QUICK: smoke-test sizes, not a result)" if study.quick else "")]
    if study.prediction:
        lines.append(f"prediction (stated before running): {study.prediction}")
    n_eval = results["n_eval"].dropna() if "n_eval" in results else pd.Series(dtype=float)
    eval_txt = (f"{int(n_eval.min())}" if len(n_eval) and n_eval.min() == n_eval.max()
                else f"{int(n_eval.min())}-{int(n_eval.max())}" if len(n_eval) else "not reported")
    lines.append(f"{results['arm'].nunique() if len(results) else 0} arms, seeds {study.seeds}, "
                 f"{len(results)} finished runs; evaluation samples per run: {eval_txt}; "
                 f"{pct} CI: Student t over seeds (scipy.stats)")
    if not per_arm.empty:
        lines.append("")
        lines.append(f"per arm: mean [{pct} CI] (n = runs with a value / seeds)")
        for m, g in per_arm.groupby("metric", sort=False):
            lines.append(f"  {m}")
            for r in g.itertuples():
                lines.append(f"    {r.arm:<{w}} {_fmt(r.mean):>9} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
                             f"  n={r.n}/{r.seeds}")
    if not paired.empty:
        lines.append("")
        lines.append(f"paired by seed: arm − baseline, mean [{pct} CI], paired t-test p")
        for m, g in paired.groupby("metric", sort=False):
            lines.append(f"  {m}")
            for r in g.itertuples():
                if math.isnan(r.ci_low):
                    verdict = "no interval (fewer than 2 pairs)"
                elif r.ci_low == r.ci_high:  # a t-interval of zero width is degenerate, not certainty
                    verdict = f"same difference on all {r.pairs} seeds (no spread to build an interval from)"
                else:
                    verdict = "differs" if (r.ci_low > 0 or r.ci_high < 0) else "CI includes 0"
                lines.append(f"    {r.arm:<{w}} − {r.baseline:<{w}} {_fmt(r.mean_diff):>9} "
                             f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]  p={_fmt(r.p)}  pairs={r.pairs}  {verdict}")
    return "\n".join(lines)


def plot(study: Study, results: pd.DataFrame, paired: pd.DataFrame, path: str | os.PathLike) -> Path | None:
    """Seaborn figure: the first metric per arm (points = seeds, bars = 95% CI) and its paired differences."""
    if results.empty or not study.metrics or study.metrics[0] not in results:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    m = study.metrics[0]
    pm = paired[paired["metric"] == m] if not paired.empty else paired
    ncols = 2 if len(pm) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6 * ncols, 0.45 * results["arm"].nunique() + 2), squeeze=False)
    ax = axes[0, 0]
    sns.pointplot(data=results, y="arm", x=m, errorbar=("ci", 95), linestyle="none", ax=ax, color="k")
    sns.stripplot(data=results, y="arm", x=m, ax=ax, alpha=0.5, size=4)
    ax.set_title(f"{m}: seeds and mean with 95% CI")
    if len(pm):
        ax = axes[0, 1]
        ax.errorbar(pm["mean_diff"], range(len(pm)), xerr=[pm["mean_diff"] - pm["ci_low"],
                                                            pm["ci_high"] - pm["mean_diff"]], fmt="o", color="k")
        ax.set_yticks(range(len(pm)), [f"{a} − {b}" for a, b in zip(pm["arm"], pm["baseline"])])
        ax.axvline(0, color="grey", lw=1)
        ax.invert_yaxis()
        ax.set_title(f"paired Δ {m} (95% CI)")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ jobs
def fit_job(run: RunSpec) -> dict:
    """A ready job: ``pfkit fit`` on the run's config, in this process; returns the last logged value of
    every metrics.csv column (and ``n_eval`` from the job args, when given)."""
    from pfkit.cli import lightning_main

    cfg_path = run.run_dir / "study_config.yaml"
    cfg_path.write_text(yaml.safe_dump(run.config, sort_keys=False))
    lightning_main(["fit", "-c", str(cfg_path)])
    metrics = pd.read_csv(run.run_dir / "metrics.csv")
    last = {c: float(metrics[c].dropna().iloc[-1]) for c in metrics.columns
            if c not in ("epoch", "step") and metrics[c].notna().any()
            and pd.api.types.is_numeric_dtype(metrics[c])}
    return {**last, "n_eval": run.args.get("n_eval", math.nan)}
