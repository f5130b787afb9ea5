"""``pfkit demo vade``: GRPO on the embedded code task with uniform vs dapo_filter vs VADE prompt sampling.

Every sampler starts from the same embedded policy with the same seed and trains until the same rollout
budget (completions generated, dropped ones included) is spent. Along the way the train pass rate (the
policy's expected pass rate over the training prompts, sampled at temperature 1 with a fixed evaluation
seed) is measured every few steps; at the end the held-out pass rate too. Prints, per sampler: rollouts
spent, effective-sample ratio (samples with non-zero group-relative advantage / completions generated),
mean fraction of zero-variance groups, train and held-out pass rate; writes ``summary.json`` and
``reward_vs_rollouts.png`` (seaborn) in ``--out``, and one run folder per sampler (metrics.csv,
rollouts.parquet, difficulty.parquet, a final checkpoint) for ``pfkit inspect difficulty``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

SAMPLERS = ("uniform", "dapo_filter", "vade")

# (full, quick) settings
SETTINGS = {
    False: dict(n_train=64, n_val=64, prompts_per_step=16, group_size=8, max_new_tokens=64, steps=30,
                eval_every=5, eval_samples=4, lr=2e-5),
    True: dict(n_train=24, n_val=16, prompts_per_step=6, group_size=8, max_new_tokens=64, steps=6,
               eval_every=3, eval_samples=1, lr=2e-5),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~1-2 min on CPU)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_vade-<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help="comma-separated: uniform, dapo_filter, vade, vade_filter")
    parser.add_argument("--budget", type=int, default=None,
                        help="rollouts (completions) per sampler; default steps x prompts x group size")
    parser.add_argument("--policy", default="embedded", help="policy checkpoint folder (default: embedded)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _pass_curve_callback(train_set, curve: list, eval_every: int, baseline: float):
    from lightning.pytorch import Callback

    class PassCurve(Callback):
        def on_train_start(self, trainer, module):
            curve.append((0, baseline))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            step = len(module.history)
            if step and (step % eval_every == 0 or trainer.should_stop):
                if curve[-1][0] != module.sampler.rollouts_spent:
                    curve.append((module.sampler.rollouts_spent, module.evaluate(train_set)))

    return PassCurve()


def run_comparison(seed: int = 0, quick: bool = False, samplers=SAMPLERS, out: str | Path | None = None,
                   verbose: bool = True, policy: str = "embedded", budget: int | None = None,
                   **overrides) -> dict:
    """Train one GRPO run per sampler on the same budget; returns {sampler: results} (+ "settings")."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from pfkit.data.prompts import PromptDataModule, code_prompt_set
    from pfkit.models import load_policy
    from pfkit.modules.grpo import GRPOModule
    from pfkit.tasks import codegen

    cfg = {**SETTINGS[bool(quick)], **overrides}
    per_step = cfg["prompts_per_step"] * cfg["group_size"]
    budget = budget or cfg["steps"] * per_step
    splits = codegen.splits(seed=0)
    import random

    train = list(splits["train"])
    random.Random(seed).shuffle(train)
    train_set = code_prompt_set(train[: cfg["n_train"]])
    val_set = code_prompt_set(list(splits["val"])[: cfg["n_val"]])
    out = Path(out) if out is not None else None
    results: dict = {"settings": {**cfg, "budget": budget, "seed": seed, "policy": policy}}
    baseline = None
    for name in samplers:
        t0 = time.perf_counter()
        model, tok = load_policy(policy)
        torch.manual_seed(seed)
        module = GRPOModule(policy=None, sampler=name, prompts_per_step=cfg["prompts_per_step"],
                            group_size=cfg["group_size"], max_new_tokens=cfg["max_new_tokens"], lr=cfg["lr"],
                            rollout_budget=budget, eval_temperature=1.0, eval_samples=cfg["eval_samples"],
                            seed=seed, log_rollouts=out is not None,
                            log_difficulty="all" if out is not None else "none")
        module.set_policy(model, tok)
        module.attach(train_set, val_set)
        if baseline is None:  # same initial policy for every sampler: evaluate it once
            baseline = module.evaluate(train_set)
        curve: list = []
        run_dir = out / name if out is not None else None
        trainer = pl.Trainer(
            max_steps=10 * cfg["steps"] + 10, max_epochs=-1, accelerator="cpu", devices=1,
            logger=CSVLogger(run_dir, name="", version="") if run_dir else False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, log_every_n_steps=1, default_root_dir=run_dir,
            callbacks=[_pass_curve_callback(train_set, curve, cfg["eval_every"], baseline)])
        dm = PromptDataModule.from_sets(train_set, val_set, steps_per_epoch=10 * cfg["steps"] + 10)
        trainer.fit(module, datamodule=dm)
        if curve[-1][0] != module.sampler.rollouts_spent:
            curve.append((module.sampler.rollouts_spent, module.evaluate(train_set)))
        heldout = module.evaluate(val_set)
        if run_dir is not None:
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
        hist = module.history
        spent = module.sampler.rollouts_spent
        res = {
            "steps": len(hist), "rollouts_spent": spent, "effective_samples": module.effective_total,
            "effective_ratio": module.effective_total / max(spent, 1),
            "frac_zero_var": sum(h["frac_zero_var"] for h in hist) / max(len(hist), 1),
            "train_pass_rate_initial": baseline, "train_pass_rate": curve[-1][1], "heldout_pass_rate": heldout,
            "curve": curve,
            "batch_reward": [(h["rollouts_spent"], h["reward_generated"]) for h in hist],
            "seconds": time.perf_counter() - t0,
        }
        results[name] = res
        if verbose:
            print(f"[{name}] {res['steps']} steps, {spent} rollouts, effective ratio {res['effective_ratio']:.3f}, "
                  f"train pass {baseline:.3f} -> {res['train_pass_rate']:.3f}, held-out {heldout:.3f} "
                  f"({res['seconds']:.0f}s)", flush=True)
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    rows, batch_rows = [], []
    for name, res in results.items():
        if name == "settings":
            continue
        rows += [{"sampler": name, "rollouts": r, "train pass rate": p} for r, p in res["curve"]]
        batch_rows += [{"sampler": name, "rollouts": r, "batch reward": p} for r, p in res["batch_reward"]]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    sns.lineplot(pd.DataFrame(rows), x="rollouts", y="train pass rate", hue="sampler", marker="o", ax=axes[0])
    sns.lineplot(pd.DataFrame(batch_rows), x="rollouts", y="batch reward", hue="sampler", ax=axes[1])
    axes[0].set_title("pass rate on training prompts")
    axes[1].set_title("mean reward of generated groups")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: dict) -> None:
    names = [n for n in results if n != "settings"]
    print(f"\n{'sampler':12} {'rollouts':>8} {'eff.ratio':>9} {'zero-var':>8} {'train pass':>10} {'held-out':>8}")
    for n in names:
        r = results[n]
        print(f"{n:12} {r['rollouts_spent']:>8} {r['effective_ratio']:>9.3f} {r['frac_zero_var']:>8.3f} "
              f"{r['train_pass_rate']:>10.3f} {r['heldout_pass_rate']:>8.3f}")


def main(args) -> int:
    from pfkit.cli import UserError
    from pfkit.runs import RunDir

    if args.threads:
        torch.set_num_threads(args.threads)
    samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
    from pfkit.data.samplers import SAMPLERS as KNOWN

    bad = [s for s in samplers if s not in KNOWN]
    if bad or not samplers:
        raise UserError(f"unknown sampler(s) {', '.join(bad) or '(none given)'}; choose from {', '.join(KNOWN)}")
    if args.budget is not None and args.budget <= 0:
        raise UserError(f"--budget must be a positive number of rollouts, got {args.budget}")
    out = Path(args.out) if args.out else Path("runs") / f"demo_vade-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    print(f"VADE demo -> {out}  (samplers: {', '.join(samplers)}; {'quick' if args.quick else 'full'} setting)",
          flush=True)
    results = run_comparison(seed=args.seed, quick=args.quick, samplers=samplers, out=out, policy=args.policy,
                             budget=args.budget)
    print_table(results)
    RunDir(out).write_summary(results)
    plot(results, out / "reward_vs_rollouts.png")
    print(f"\nwrote {out / 'summary.json'} and {out / 'reward_vs_rollouts.png'}; "
          f"inspect with: pfkit inspect difficulty {out / samplers[-1]}")
    return 0
