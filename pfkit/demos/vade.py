"""``pfkit demo vade`` and the VADE studies' jobs: GRPO on the embedded code task (``run_arm``) or on the
embedded visual task with the shipped VLM (``run_visual_arm``, ``--task visual``), one prompt sampler per run.

``run_arm(run)`` is the one path both use (``studies/vade.yaml`` names it as ``job``; the demo calls it once
per sampler). A run is configs/grpo_codegen.yaml (merged with the study's/arm's overrides) trained until a
shared rollout budget (completions generated, dropped ones included; the samplers never overrun it) is
spent, then evaluated on the **unfiltered validation split** (held-out problems no sampler ever selects
from):

* at the start and the end: ``eval_samples`` samples per prompt at temperature 1 (64 x 10 = 640 by
  default; its standard error given the validation prompts, ``val_pass_final_se``, is returned with it and
  is <= 0.01 at the embedded policy's pass rate, about 0.1). The start is the same policy for every arm
  of a seed, so it is measured once per seed and shared through the study folder (``_initial_eval/``);
* along the way, every ``eval_every`` rollouts: ``curve_samples`` samples per prompt (a cheaper, noisier
  point; the same evaluation seed at every point and in every arm of a seed, so curves differ by
  training, not by evaluation draws).

Per step it records the **effective-gradient ratio** (the paper's Fig. 3): the share of the training
batch's groups with mixed rewards (``eff_ratio``), and the share among every group generated
(``mixed_generated``; they differ only for the filtering samplers, whose dropped groups cost rollouts).

Rollouts-to-target: the target is the final validation pass rate of the arm named ``target_arm`` (default
``uniform``) on the same seed, on the curve's estimator (its last curve point), read from that arm's
finished run folder (the study runs arms in order, so it exists when the baseline arm is listed first).
``rollouts_to_target`` is the first curve point that reaches it; ``NaN`` when the run never does ("not
reached", never 0 or 1). The ratio to the baseline's own rollouts-to-target is NaN too when the baseline
gained nothing over the initial policy on the precise estimate (no signal to reach, not a tie).

Writes ``curve.csv`` (evaluation points), ``steps.csv`` (per-step ratios), ``metrics.csv`` and
``difficulty.parquet`` (``pfkit inspect difficulty``) in the run folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from pfkit.study import RunSpec as Run  # the demo builds the same runs the study does

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "grpo_codegen.yaml"  # package data
SAMPLERS = ("uniform", "dapo_filter", "vade")

# job arguments that are not config keys (a study's `args:`); the demo's quick mode shrinks them
ARGS = dict(budget=512, eval_every=256, curve_samples=1, eval_samples=10, target_arm="uniform",
            log_difficulty="all", threads=1)
QUICK = dict(overrides={"data.init_args.n_train": 24, "data.init_args.n_val": 8,
                        "model.init_args.prompts_per_step": 6},
             args=dict(budget=6 * 6 * 8, eval_every=3 * 6 * 8, curve_samples=1, eval_samples=2))


def load_config(path: str | Path = CONFIG) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


def set_dotted(cfg: dict, key: str, value) -> None:
    node = cfg
    *head, last = key.split(".")
    for k in head:
        node = node.setdefault(k, {})
    node[last] = value


# --------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def pass_rates(module, prompt_set, samples: int, seed: int, batch_size: int = 64) -> torch.Tensor:
    """Per-prompt pass rate ``[n]`` of the current policy: ``samples`` completions each at temperature 1."""
    from pfkit.rollout import generate

    h = module.hparams
    g = torch.Generator().manual_seed(seed)
    if module.processor is not None:  # a vision-language policy: each prompt's image goes with it
        ids = list(range(len(prompt_set)))
        table = module._sample_and_check(ids, list(prompt_set.prompts), samples, check=prompt_set.score,
                                         temperature=1.0, stop=prompt_set.stop, generator=g,
                                         images=module._images(prompt_set, ids), batch_prompts=batch_size)
        per = table.groupby("prompt_id", sort=False)["score"].mean().reindex(ids)
        return torch.tensor(per.to_numpy(), dtype=torch.float64)
    out = []
    for start in range(0, len(prompt_set), batch_size):
        ids = list(range(start, min(start + batch_size, len(prompt_set))))
        ro = generate(module.model, module.tokenizer, [prompt_set.prompts[i] for i in ids], n=samples,
                      max_new_tokens=h.max_new_tokens, temperature=1.0, top_p=h.top_p, stop=prompt_set.stop,
                      generator=g)
        r = torch.tensor(prompt_set.score([i for i in ids for _ in range(samples)], ro.texts), dtype=torch.float64)
        out.append(r.view(len(ids), samples).mean(1))
    return torch.cat(out)


def standard_error(per_prompt: torch.Tensor, samples: int) -> float:
    """SE of the mean pass rate given the prompts: sqrt(sum_i p_i (1 - p_i) / (S - 1)) / n (binomial per
    prompt, unbiased with S - 1); the sampling noise that separates two arms evaluated on the same set."""
    if samples < 2:
        return math.nan
    n = per_prompt.numel()
    return float((per_prompt * (1 - per_prompt)).sum().div(samples - 1).sqrt() / n)


def rollouts_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    """Rollouts at the first point of ``curve`` [(rollouts, pass rate)] that reaches ``target``; NaN if none."""
    for spent, value in curve:
        if value >= target - 1e-12:
            return float(spent)
    return math.nan


def target_ratio(rtt: float, rtt_base: float, base_gain: float) -> float:
    """rollouts-to-target over the baseline's; NaN when either did not reach it or the baseline did not
    improve on the initial policy (``base_gain <= 0``: there is nothing to reach, not a tie)."""
    if not base_gain > 0 or math.isnan(rtt) or math.isnan(rtt_base) or rtt_base <= 0:
        return math.nan
    return rtt / rtt_base


# ------------------------------------------------------------------------------------------------- job
def run_arm(run) -> dict:
    """One GRPO run: ``run.config`` (LightningCLI dict), ``run.args`` (``ARGS`` keys); returns flat metrics."""
    import lightning.pytorch as pl
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import CSVLogger

    from pfkit.data.prompts import PromptDataModule
    from pfkit.modules.grpo import GRPOModule

    args = {**ARGS, **(run.args or {})}
    # one thread: the rollouts share the CPU with the sandbox's scoring workers, and on an oversubscribed
    # machine a second BLAS thread made a run 5x slower (618 s vs ~120 s measured at one thread)
    torch.set_num_threads(int(args.get("threads", 1)))
    cfg = copy.deepcopy(run.config)
    seed = int(run.seed)
    run_dir = Path(run.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pl.seed_everything(seed, verbose=False)

    model_kw = dict(cfg["model"]["init_args"])
    G = int(model_kw.get("group_size", 8))
    budget = int(args["budget"])
    if budget <= 0 or budget % G:
        raise ValueError(f"budget must be a positive multiple of group_size={G}, got {budget}")
    model_kw.update(seed=seed, rollout_budget=budget, log_rollouts=bool(args.get("log_rollouts", False)),
                    log_difficulty=args["log_difficulty"])
    data_kw = {**cfg.get("data", {}).get("init_args", {}), "seed": seed}  # the seed picks the training prompts
    dm = PromptDataModule(**data_kw)
    dm.setup("fit")
    module = GRPOModule(**model_kw)
    module.attach(dm.train_set, dm.val_set)
    val = dm.val_set
    eval_seed = 777 + seed  # the same evaluation draws at every point and in every arm of this seed
    S_curve, S_final = int(args["curve_samples"]), int(args["eval_samples"])
    every = int(args["eval_every"])

    # the initial policy's pass rate is the same for every arm of a seed: measure it once, at the final
    # evaluation's size, and share it through the study folder
    key = {"policy": str(model_kw.get("policy")), "val": list(val.ids), "samples": S_final, "seed": eval_seed,
           "max_new_tokens": int(module.hparams.max_new_tokens)}
    cache = run_dir.parent.parent / "_initial_eval" / f"seed_{seed}.json"
    initial = json.loads(cache.read_text()) if cache.is_file() else None
    if initial is None or initial["key"] != key:
        p0 = pass_rates(module, val, S_final, eval_seed)
        initial = {"key": key, "val_pass": float(p0.mean()), "se": standard_error(p0, S_final),
                   "curve_pass": float(pass_rates(module, val, S_curve, eval_seed).mean())}
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{run.arm}.tmp")
        tmp.write_text(json.dumps(initial))
        tmp.replace(cache)

    curve: list[tuple[int, int, float]] = []   # (step, rollouts, val pass rate)

    class Curve(Callback):
        next_mark = every

        def on_train_start(self, trainer, m):
            curve.append((0, 0, initial["curve_pass"]))

        def on_train_batch_end(self, trainer, m, outputs, batch, batch_idx):
            spent = m.sampler.rollouts_spent
            if spent >= self.next_mark and spent < budget:
                curve.append((len(m.history), spent, float(pass_rates(m, val, S_curve, eval_seed).mean())))
                while self.next_mark <= spent:
                    self.next_mark += every

    max_steps = 20 * budget // (G * module.hparams.prompts_per_step) + 10  # filters may need many steps
    trainer = pl.Trainer(max_steps=max_steps, max_epochs=-1, accelerator="cpu", devices=1,
                         logger=CSVLogger(run_dir, name="", version=""), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=run_dir, callbacks=[Curve()])
    trainer.fit(module, datamodule=dm)  # the module already holds its prompt sets; dm's seed matches the module's
    train_s = time.perf_counter() - t0

    spent = module.sampler.rollouts_spent
    curve.append((len(module.history), spent, float(pass_rates(module, val, S_curve, eval_seed).mean())))
    final = pass_rates(module, val, S_final, eval_seed)
    val_final, se = float(final.mean()), standard_error(final, S_final)

    import pandas as pd

    pd.DataFrame(curve, columns=["step", "rollouts", "val_pass"]).assign(arm=run.arm, seed=seed).to_csv(
        run_dir / "curve.csv", index=False)
    steps = []
    for i, h in enumerate(module.history):
        kept = h["groups_kept"]
        steps.append({"step": i + 1, "rollouts": h["rollouts_spent"],
                      "eff_ratio": h["effective_samples"] / (kept * G) if kept else 0.0,
                      "mixed_generated": 1.0 - h["frac_zero_var"], "reward_generated": h["reward_generated"],
                      "groups_kept": kept, "groups_dropped": h["groups_dropped"]})
    sdf = pd.DataFrame(steps).assign(arm=run.arm, seed=seed)
    sdf.to_csv(run_dir / "steps.csv", index=False)

    # area under the validation curve (trapezoid over rollouts, / budget): the mean pass rate while training
    xs, ys = [c[1] for c in curve], [c[2] for c in curve]
    auc = sum((xs[i + 1] - xs[i]) * (ys[i + 1] + ys[i]) / 2 for i in range(len(xs) - 1)) / max(xs[-1], 1)
    points = [(c[1], c[2]) for c in curve]
    # the target lives on the curve's own estimator (the baseline's last curve point), so a run's curve is
    # compared with a number measured the same way; val_pass_final is the precise end-point estimate
    own = {"val_pass_final": val_final, "val_pass_initial": initial["val_pass"], "curve_final": curve[-1][2],
           "curve_initial": curve[0][2]}
    (run_dir / "final.json").write_text(json.dumps({**own, "curve": points}))

    # rollouts to the baseline arm's final validation pass rate (same seed), read from its finished run
    base_dir = run_dir.parent.parent / args["target_arm"] / run_dir.name
    if run.arm == args["target_arm"]:
        base = {**own, "curve": points}
    elif (base_dir / "final.json").is_file():
        base = json.loads((base_dir / "final.json").read_text())
    else:
        base = None
    if base is not None:
        target = base["curve_final"]
        gain = base["val_pass_final"] - base["val_pass_initial"]  # the precise estimate decides "no signal"
        rtt = rollouts_to_reach(points, target)
        rtt_base = rollouts_to_reach([tuple(p) for p in base["curve"]], target)
        ratio = target_ratio(rtt, rtt_base, gain)
    else:
        target = gain = rtt = ratio = math.nan

    n = len(module.history)
    tail = sdf.tail(max(1, n // 4))
    skipped = getattr(module.sampler, "skipped", None)
    return {
        "n_eval": len(val) * S_final, "eval_samples": S_final, "n_val_prompts": len(val),
        "val_pass_final": val_final, "val_pass_final_se": se, "val_pass_initial": initial["val_pass"],
        "val_pass_initial_se": initial["se"], "val_gain": val_final - initial["val_pass"],
        "val_auc": auc, "target": target, "target_gain": gain,
        "rollouts_to_target": rtt, "reached_target": float(not math.isnan(rtt)) if base is not None else math.nan,
        "rollouts_to_target_ratio": ratio,
        "eff_ratio_mean": float(sdf.eff_ratio.mean()) if n else math.nan,
        "eff_ratio_last_quarter": float(tail.eff_ratio.mean()) if n else math.nan,
        "mixed_generated_mean": float(sdf.mixed_generated.mean()) if n else math.nan,
        "effective_sample_ratio": module.effective_total / max(spent, 1),
        "rollouts_spent": spent, "steps": n, "groups_dropped": float(sdf.groups_dropped.sum()) if n else 0.0,
        "greso_skipped": float(skipped) if skipped is not None else math.nan,
        "train_s": round(train_s, 1),
    }


# ------------------------------------------------------------------------------- the embedded visual task
VISUAL_STUDY = "vade_visual"      # studies/vade_visual.yaml: `pfkit demo vade --task visual` runs it
# GRPO's prompts come from their own seed streams of pfkit.tasks.visual.generate: the shipped VLM was trained
# on splits(seed=0)'s train stream (1), tuned on val (2) and reported on test (3); 4 and 5 are new images
VISUAL_TRAIN_STREAM, VISUAL_HELDOUT_STREAM = 4, 5


def visual_prompt_files(folder: str | Path, n_train: int, n_val: int, size: int = 64) -> tuple[Path, Path]:
    """The visual task's GRPO prompt files (PNG + JSONL, :func:`pfkit.tasks.visual.write_prompt_file`):
    ``n_train`` training prompts and ``n_val`` held-out ones, written once per size into ``folder``
    (atomically: parallel runs of a study share them) and returned as (train.jsonl, heldout.jsonl)."""
    import os
    import shutil
    import tempfile

    from pfkit.tasks import visual

    final = Path(folder) / f"train{n_train}_heldout{n_val}_px{size}"
    if not (final / "heldout.jsonl").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp_"))
        visual.write_prompt_file(visual.generate(n_train, seed=VISUAL_TRAIN_STREAM, size=size), tmp, "train.jsonl")
        visual.write_prompt_file(visual.generate(n_val, seed=VISUAL_HELDOUT_STREAM, size=size), tmp / "h")
        (tmp / "h" / "prompts.jsonl").rename(tmp / "heldout.jsonl")
        # the held-out images live under h/images: rewrite their paths relative to the folder
        rows = [json.loads(line) for line in (tmp / "heldout.jsonl").read_text().splitlines()]
        (tmp / "heldout.jsonl").write_text("".join(json.dumps({**r, "image": "h/" + r["image"]}) + "\n" for r in rows))
        try:
            os.rename(tmp, final)
        except OSError:  # another run wrote it first: same bytes (a function of the seeds only)
            shutil.rmtree(tmp, ignore_errors=True)
    return final / "train.jsonl", final / "heldout.jsonl"


def run_visual_arm(run) -> dict:
    """:func:`run_arm` on the embedded visual task (configs/grpo_visual.yaml): writes the prompt files into
    the study folder's ``_visual_data/`` (shared by every run) and points the config's data at them."""
    cfg = copy.deepcopy(run.config)
    data = cfg.setdefault("data", {}).setdefault("init_args", {})
    size = int((run.args or {}).get("image_px", 64))
    train, held = visual_prompt_files(Path(run.run_dir).parent.parent / "_visual_data", int(data["n_train"]),
                                      int(data["n_val"]), size)
    data.update(task="file", prompts_file=str(train), val_file=str(held))
    args = {k: v for k, v in (run.args or {}).items() if k != "image_px"}
    return run_arm(Run(arm=run.arm, seed=run.seed, run_dir=run.run_dir, config=cfg, args=args,
                       factors=dict(run.factors or {}), quick=run.quick))


def main_visual(args) -> int:
    """``pfkit demo vade --task visual``: the study studies/vade_visual.yaml (uniform vs VADE, paired seeds,
    held-out evaluation, 95% intervals), through ``pfkit study``'s own command."""
    from pfkit.cli import UserError, resolve_study
    from pfkit.commands import study as study_cmd

    given = [f"--{k}" for k in ("samplers", "variant", "budget", "config", "policy") if getattr(args, k) is not None]
    if given:
        raise UserError(f"{', '.join(given)} not used with --task visual (it runs studies/{VISUAL_STUDY}.yaml); "
                        f"change that study or run `pfkit study -c studies/{VISUAL_STUDY}.yaml` with your own copy")
    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_study(VISUAL_STUDY)
    if not Path(path).is_file():
        raise UserError(f"study {VISUAL_STUDY}.yaml not found (looked for {path}); reinstall pfkit")
    out = args.out or f"runs/demo_vade_visual{'_quick' if args.quick else ''}-{time.strftime('%Y%m%d-%H%M%S')}"
    ns = argparse.Namespace(config=path, out=out, workers=args.workers, quick=args.quick, launcher="local",
                            arms=None, summary=False)
    rc = study_cmd.main(ns)
    if not args.quick and rc == 0 and (ROOT / "studies" / "results").is_dir():  # a checkout, not a wheel
        for path in store_visual(out):
            print(f"stored {path}")
    print(f"inspect a run's posteriors with: pfkit inspect difficulty {Path(out) / 'vade' / 'seed_0'}")
    return rc


def store_visual(out: str | Path, prefix: str | Path = ROOT / "studies" / "results" / "vade_visual") -> list[Path]:
    """A finished visual study's curves and steps (:func:`store_curves`) and the VADE run's posteriors on
    seed 0 (``<prefix>_posteriors.csv``: every prompt at every step, from its difficulty.parquet) next to
    the study's table, for notebook 02 to read."""
    from pfkit.runs import RunDir

    paths = store_curves(out, prefix)
    diff = RunDir(Path(out) / "vade" / "seed_0").read("difficulty")
    cols = ["step", "prompt_id", "alpha", "beta", "p_mean", "selected", "successes", "trials"]
    paths.append(Path(f"{prefix}_posteriors.csv"))
    diff[cols].round(6).to_csv(paths[-1], index=False)
    return paths


# ------------------------------------------------------------------------------------------------ demo
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("code", "visual"), default="code",
                        help="code: the embedded code task (default); visual: the embedded image-question task "
                             f"with the shipped VLM (runs studies/{VISUAL_STUDY}.yaml: uniform vs VADE, paired seeds)")
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (~1-2 min on CPU), not a result")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_vade-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="code task: the seed (visual: the study's seeds)")
    parser.add_argument("--samplers", default=None,
                        help="code task, comma-separated: uniform, dapo_filter, greso, mopps, vade, vade_filter "
                             f"(default {','.join(SAMPLERS)})")
    parser.add_argument("--variant", default=None,
                        help="VADE tracker variant for the vade samplers: paper | p1p | greedy | last_update | kit")
    parser.add_argument("--budget", type=int, default=None, help="rollouts (completions) per sampler")
    parser.add_argument("--config", default=None, help="base config (default configs/grpo_codegen.yaml)")
    parser.add_argument("--policy", default=None, help="policy checkpoint folder (default: the config's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="visual task: parallel runs (default: the study's)")


def demo_runs(out: Path, samplers, *, seed: int = 0, quick: bool = False, budget: int | None = None,
              config: str | Path = CONFIG, policy: str | None = None, variant: str | None = None) -> list[Run]:
    """The demo's runs: one per sampler, the base config plus the sampler (and the quick sizes)."""
    base = load_config(config)
    args = {**ARGS, **(QUICK["args"] if quick else {})}
    if budget is not None:
        args["budget"] = budget
    runs = []
    for name in samplers:
        cfg = copy.deepcopy(base)
        over = {"model.init_args.sampler": name, **(QUICK["overrides"] if quick else {})}
        if policy is not None:
            over["model.init_args.policy"] = policy
        if variant is not None:
            over["model.init_args.sampler_options.tracker.variant"] = variant
        for k, v in over.items():
            set_dotted(cfg, k, v)
        runs.append(Run(arm=name, seed=seed, run_dir=out / name / f"seed_{seed}", config=cfg,
                        args={**args, "target_arm": samplers[0]}, quick=quick))
    return runs


def plot(out: Path, names) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    curves = pd.concat([pd.read_csv(p) for n in names for p in (out / n).glob("seed_*/curve.csv")])
    steps = pd.concat([pd.read_csv(p) for n in names for p in (out / n).glob("seed_*/steps.csv")])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(curves, x="rollouts", y="val_pass", hue="arm", marker="o", ax=axes[0])
    sns.lineplot(steps, x="step", y="eff_ratio", hue="arm", ax=axes[1])
    axes[0].set_title("validation pass rate (unfiltered held-out split)")
    axes[1].set_title("effective-gradient ratio (mixed-reward groups in the batch)")
    fig.tight_layout()
    path = out / "reward_vs_rollouts.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(args) -> int:
    from pfkit.cli import UserError
    from pfkit.data.samplers import SAMPLERS as KNOWN
    from pfkit.rl.vade import VARIANTS
    from pfkit.runs import RunDir

    if getattr(args, "task", "code") == "visual":
        return main_visual(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.config = args.config or str(CONFIG)
    samplers = [s.strip() for s in (args.samplers or ",".join(SAMPLERS)).split(",") if s.strip()]
    bad = [s for s in samplers if s not in KNOWN]
    if bad or not samplers:
        raise UserError(f"unknown sampler(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(KNOWN)}")
    if args.budget is not None and args.budget <= 0:
        raise UserError(f"--budget must be a positive number of rollouts, got {args.budget}")
    if args.variant is not None and args.variant not in VARIANTS:
        raise UserError(f"unknown --variant {args.variant}; choose from {', '.join(VARIANTS)}")
    if not Path(args.config).is_file():
        raise UserError(f"config {args.config} not found; pass --config PATH.yaml")
    out = Path(args.out) if args.out else Path("runs") / f"demo_vade-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = demo_runs(out, samplers, seed=args.seed, quick=args.quick, budget=args.budget, config=args.config,
                     policy=args.policy, variant=args.variant)
    G = int(runs[0].config["model"]["init_args"].get("group_size", 8))
    if runs[0].args["budget"] % G:
        raise UserError(f"--budget must be a multiple of group_size={G} (whole groups), got {runs[0].args['budget']}")
    out.mkdir(parents=True, exist_ok=True)
    print(f"VADE demo -> {out}  (samplers: {', '.join(samplers)}; {'quick' if args.quick else 'full'} setting, "
          f"budget {runs[0].args['budget']} rollouts)", flush=True)
    results = {}
    for run in runs:
        res = run_arm(run)
        results[run.arm] = res
        print(f"[{run.arm}] {res['steps']} steps, {res['rollouts_spent']} rollouts, effective-gradient ratio "
              f"{res['eff_ratio_mean']:.3f} (generated {res['mixed_generated_mean']:.3f}), validation pass "
              f"{res['val_pass_initial']:.3f} -> {res['val_pass_final']:.3f} ± {res['val_pass_final_se']:.3f} "
              f"(n_eval {res['n_eval']}) ({res['train_s']:.0f}s)", flush=True)

    def f(x):
        return "not reached" if isinstance(x, float) and math.isnan(x) else f"{x:.3f}" if isinstance(x, float) else x

    print(f"\n{'sampler':12} {'rollouts':>8} {'eff.ratio':>9} {'val pass':>9} {'±SE':>6} {'AUC':>6} "
          f"{'to target':>11} {'ratio':>11}")
    for n, r in results.items():
        print(f"{n:12} {r['rollouts_spent']:>8} {r['eff_ratio_mean']:>9.3f} {r['val_pass_final']:>9.3f} "
              f"{r['val_pass_final_se']:>6.3f} {r['val_auc']:>6.3f} {f(r['rollouts_to_target']):>11} "
              f"{f(r['rollouts_to_target_ratio']):>11}")
    print(f"(target: {samplers[0]}'s final validation pass rate; one seed, n_eval = {results[samplers[0]]['n_eval']} "
          "completions per final evaluation)")
    RunDir(out).write_summary({"settings": {"seed": args.seed, "quick": args.quick, **runs[0].args}, **results})
    png = plot(out, samplers)
    print(f"\nwrote {out / 'summary.json'} and {png}; inspect with: "
          f"pfkit inspect difficulty {runs[-1].run_dir}")
    return 0


def collect_curves(out: str | Path, arms=None) -> tuple:
    """The study folder's per-run ``curve.csv`` and ``steps.csv``, stacked (runs with a ``result.json``):
    ``(curves, steps)`` DataFrames with ``arm`` and ``seed`` columns, for the notebook's figures."""
    import pandas as pd

    out = Path(out)
    curves, steps = [], []
    for run_dir in sorted(out.glob("*/seed_*")):
        if arms is not None and run_dir.parent.name not in arms:
            continue
        if (run_dir / "result.json").is_file():  # finished runs of a study, the ones in its table
            curves.append(pd.read_csv(run_dir / "curve.csv"))
            steps.append(pd.read_csv(run_dir / "steps.csv"))
    if not curves:
        return pd.DataFrame(columns=["step", "rollouts", "val_pass", "arm", "seed"]), pd.DataFrame()
    return pd.concat(curves, ignore_index=True), pd.concat(steps, ignore_index=True)


def store_curves(out: str | Path, prefix: str | Path = ROOT / "studies" / "results" / "vade") -> list[Path]:
    """Write a finished study's curves next to its table (``<prefix>_curves.csv``, ``<prefix>_steps.csv``)."""
    curves, steps = collect_curves(out)
    paths = [Path(f"{prefix}_curves.csv"), Path(f"{prefix}_steps.csv")]
    curves.round(6).to_csv(paths[0], index=False)
    steps.round(6).to_csv(paths[1], index=False)
    return paths
