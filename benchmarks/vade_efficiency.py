"""VADE's sample efficiency: rollouts needed to reach uniform GRPO's final train pass rate.

Two views, both driving the real samplers (``pfkit.data.samplers``) through their ``collect`` API:

* ``--mode bandit`` (seconds): a synthetic prompt set where prompt ``i`` has a latent logit ``theta_i``
  (success probability ``sigmoid(theta_i)``). A group of G Bernoulli rollouts is drawn per selected prompt;
  training on a group moves ``theta_i`` up in proportion to the group's reward std (a GRPO update has
  gradient only where advantages are non-zero), plus a small shared "generalisation" drift for every
  prompt. Cheap enough for many seeds; it isolates the sampler from policy-gradient noise. Two scenarios:
  ``spread`` (success rates spread over 0..1) and ``hard`` (most prompts almost never solved). A ratio
  ``vade/dapo_filter`` of 0 means dapo_filter never reached the target within its budget.
* ``--mode grpo`` (minutes per seed): the real GRPO module on the embedded code task, via the
  ``pfkit demo vade`` runner, with a shared rollout budget.

For each seed: run ``uniform`` for the budget, take its final train pass rate as the target, then find for
every sampler the rollouts spent when its curve first reaches the target (``inf`` if never). Prints the
per-seed table and the median ratios ``vade / uniform`` (target <= 0.7) and ``vade / dapo_filter``
(target < 1).

    python benchmarks/vade_efficiency.py --mode bandit --seeds 5
    python benchmarks/vade_efficiency.py --mode grpo --seeds 3 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from pfkit.data.samplers import make_sampler

SAMPLER_NAMES = ("uniform", "dapo_filter", "vade")


SCENARIOS = {
    # initial logits ~ N(mean, std): "spread" = success rates spread over 0..1 (the DESIGN target for the
    # embedded policy); "hard" = most prompts nearly never solved (a weak policy, like the shipped one)
    "spread": dict(theta_mean=-1.0, theta_std=2.5),
    "hard": dict(theta_mean=-3.0, theta_std=2.0),
}


def bandit_run(sampler_name: str, seed: int, *, num_prompts=256, k=16, group_size=8, budget_steps=150,
               lr=0.6, shared=0.004, theta_mean=-1.0, theta_std=2.5, tracker=None) -> list[tuple[int, float]]:
    """One synthetic training run; returns [(rollouts_spent, mean success prob over all prompts)]."""
    g = torch.Generator().manual_seed(10_000 + seed)          # same prompt set for every sampler
    theta = torch.randn(num_prompts, generator=g) * theta_std + theta_mean
    roll_g = torch.Generator().manual_seed(20_000 + seed)     # same outcome stream
    sampler = make_sampler(sampler_name, num_prompts, group_size, seed=seed, tracker=tracker or {})

    def rollout(ids):
        p = torch.sigmoid(theta[ids]).unsqueeze(1).expand(len(ids), group_size)
        return torch.bernoulli(p, generator=roll_g), [None] * len(ids)

    budget = budget_steps * k * group_size
    curve = [(0, float(torch.sigmoid(theta).mean()))]
    while sampler.rollouts_spent < budget:
        batch = sampler.collect(k, rollout)
        if batch.prompt_ids:
            std = batch.rewards.std(dim=1, correction=0)       # 0 for all-equal groups: no gradient
            ids = torch.tensor(batch.prompt_ids)
            theta.index_add_(0, ids, lr * std / 0.5)
            theta += shared * float((std > 0).sum())
        curve.append((sampler.rollouts_spent, float(torch.sigmoid(theta).mean())))
    return curve


def rollouts_to_reach(curve: list[tuple[int, float]], target: float) -> float:
    for spent, value in curve:
        if value >= target - 1e-12:
            return float(spent)
    return math.inf


def summarise(curves_by_seed: dict[int, dict[str, list[tuple[int, float]]]], names=SAMPLER_NAMES) -> dict:
    rows = []
    for seed, curves in curves_by_seed.items():
        target = curves["uniform"][-1][1]
        need = {n: rollouts_to_reach(curves[n], target) for n in names}
        rows.append({"seed": seed, "target_pass_rate": target, **{f"rollouts_{n}": need[n] for n in names},
                     **{f"final_{n}": curves[n][-1][1] for n in names}})
    def ratio(a, b):  # inf / inf (neither reached the target) counts as a tie
        if math.isinf(a) and math.isinf(b):
            return 1.0
        return a / b if b > 0 else (1.0 if a == 0 else math.inf)

    ratio_u = [ratio(r["rollouts_vade"], r["rollouts_uniform"]) for r in rows]
    ratio_d = [ratio(r["rollouts_vade"], r["rollouts_dapo_filter"]) for r in rows]
    return {"per_seed": rows, "median_vade_over_uniform": statistics.median(ratio_u),
            "median_vade_over_dapo": statistics.median(ratio_d),
            "target_vade_over_uniform": 0.7, "meets_uniform_target": statistics.median(ratio_u) <= 0.7,
            "meets_dapo_target": statistics.median(ratio_d) < 1.0}


def print_table(title: str, summary: dict, names=SAMPLER_NAMES) -> None:
    print(f"\n== {title} ==")
    head = f"{'seed':>4} {'target':>7} " + " ".join(f"{n + ' rollouts':>20}" for n in names)
    print(head)
    for r in summary["per_seed"]:
        print(f"{r['seed']:>4} {r['target_pass_rate']:>7.3f} "
              + " ".join(f"{r[f'rollouts_{n}']:>20.0f}" for n in names))
    print(f"median rollouts ratio vade/uniform     = {summary['median_vade_over_uniform']:.3f} "
          f"(target <= 0.7: {'met' if summary['meets_uniform_target'] else 'NOT met'})")
    print(f"median rollouts ratio vade/dapo_filter = {summary['median_vade_over_dapo']:.3f} "
          f"(target < 1: {'met' if summary['meets_dapo_target'] else 'NOT met'})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("bandit", "grpo", "both"), default="bandit")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="grpo mode: CI-sized runs")
    ap.add_argument("--policy", default="embedded", help="grpo mode: policy checkpoint folder")
    ap.add_argument("--steps", type=int, default=None, help="grpo mode: steps of the budget (default: demo's)")
    ap.add_argument("--n-train", type=int, default=None, help="grpo mode: training prompts")
    ap.add_argument("--k", type=int, default=None, help="grpo mode: prompts per step")
    ap.add_argument("--eval-every", type=int, default=None, help="grpo mode: steps between pass-rate evals")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = {}
    if args.mode in ("bandit", "both"):
        for scen, params in SCENARIOS.items():
            t0 = time.perf_counter()
            curves = {s: {n: bandit_run(n, s, **params) for n in SAMPLER_NAMES} for s in range(args.seeds)}
            result[f"bandit_{scen}"] = summarise(curves)
            print_table(f"synthetic bandit '{scen}' {params}, {args.seeds} seeds ({time.perf_counter() - t0:.1f}s)",
                        result[f"bandit_{scen}"])
    if args.mode in ("grpo", "both"):
        from pfkit.demos.vade import run_comparison

        curves = {}
        t0 = time.perf_counter()
        over = {k: v for k, v in (("steps", args.steps), ("n_train", args.n_train), ("prompts_per_step", args.k),
                                  ("eval_every", args.eval_every)) if v is not None}
        runs = []
        for s in range(args.seeds):
            res = run_comparison(seed=s, quick=args.quick, samplers=SAMPLER_NAMES, out=None, verbose=True,
                                 policy=args.policy, **over)
            curves[s] = {n: res[n]["curve"] for n in SAMPLER_NAMES}
            runs.append({n: {k: v for k, v in res[n].items() if k not in ("batch_reward",)} for n in SAMPLER_NAMES})
            runs[-1]["settings"] = res["settings"]
        result["grpo"] = summarise(curves)
        result["grpo"]["runs"] = runs
        for n in SAMPLER_NAMES:
            eff = [r[n]["effective_ratio"] for r in runs]
            held = [r[n]["heldout_pass_rate"] for r in runs]
            print(f"{n:12} effective-sample ratio {statistics.mean(eff):.3f}, "
                  f"held-out pass {statistics.mean(held):.3f} (mean over seeds)")
        print_table(f"GRPO on the embedded code task, {args.seeds} seeds ({time.perf_counter() - t0:.0f}s)",
                    result["grpo"])
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
