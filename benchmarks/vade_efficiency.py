"""VADE's sample efficiency: rollouts each prompt sampler needs to reach a pass-rate target, same budget for all.

Two modes, both driving the real samplers (``pfkit.data.samplers``) through their ``collect`` API, every
sampler stopping at the same rollout budget (``rollout_budget``: dapo_filter's refills included):

* ``--mode bandit`` (seconds) -- **the kit's synthetic model, not evidence about the paper.** Prompt ``i``
  has a latent logit ``theta_i``; a group of G Bernoulli(sigmoid(theta_i)) rollouts is drawn per selected
  prompt; training on a group moves ``theta_i`` up in proportion to the group's reward std (a GRPO update
  has gradient only where advantages are non-zero) plus a small shared drift per useful group. This rule
  builds in the assumption that variance-seeking pays, so it can only say how much each *selection rule*
  exploits that assumption. Targets are fixed gains of the mean success probability over its start
  (``--gains``, default +0.05 / +0.10 / +0.15), so they do not depend on the budget; a sampler that does
  not reach one within the budget is "not reached".
* ``--mode grpo`` (minutes per run) -- the real GRPO module on the embedded code task through the VADE
  study's job (``pfkit.demos.vade.run_arm``): validation pass rate on the **unfiltered held-out split**
  (64 prompts x ``--eval-samples`` at temperature 1, its standard error printed), the area under the
  validation curve, and rollouts to uniform's final validation pass rate on the same seed.

Per seed, ``ratio = rollouts_to_target(sampler) / rollouts_to_target(uniform)``; NaN ("not reached") when
either never reaches the target, and NaN when uniform gained nothing (no signal; never a tie of 1.0). The
summary prints, per sampler, how many seeds reached the target and the geometric-mean ratio with a 95%
t-interval over the seeds that did (scipy), plus the goals from the issue (<= 0.7x uniform, < dapo_filter).

    python benchmarks/vade_efficiency.py --mode bandit --seeds 10
    python benchmarks/vade_efficiency.py --mode grpo --seeds 3 --budget 768
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from pfkit.data.samplers import make_sampler

# name -> (sampler, sampler options)
BANDIT_SAMPLERS = {
    "uniform": ("uniform", {}),
    "dapo_filter": ("dapo_filter", {}),
    "greso": ("greso", {}),
    "mopps": ("mopps", {}),
    "vade": ("vade", {"tracker": {"variant": "paper"}}),
    "vade_p1p": ("vade", {"tracker": {"variant": "p1p"}}),
    "vade_greedy": ("vade", {"tracker": {"variant": "greedy"}}),
    "vade_last_update": ("vade", {"tracker": {"variant": "last_update"}}),
    "vade_kit": ("vade", {"tracker": {"variant": "kit"}}),
}
GRPO_SAMPLERS = ("uniform", "dapo_filter", "greso", "mopps", "vade")

SCENARIOS = {
    # initial logits ~ N(mean, std): "spread" = success rates spread over 0..1; "hard" = most prompts nearly
    # never solved (a weak policy, like the shipped one)
    "spread": dict(theta_mean=-1.0, theta_std=2.5),
    "hard": dict(theta_mean=-3.0, theta_std=2.0),
}


def bandit_run(sampler_name: str, seed: int, *, options: dict | None = None, num_prompts=256, k=16,
               group_size=8, budget=150 * 16 * 8, lr=0.6, shared=0.004, theta_mean=-1.0,
               theta_std=2.5) -> list[tuple[int, float]]:
    """One synthetic training run; returns [(rollouts_spent, mean success prob over all prompts)]."""
    g = torch.Generator().manual_seed(10_000 + seed)          # same prompt set for every sampler
    theta = torch.randn(num_prompts, generator=g) * theta_std + theta_mean
    roll_g = torch.Generator().manual_seed(20_000 + seed)     # same outcome stream
    sampler = make_sampler(sampler_name, num_prompts, group_size, seed=seed, rollout_budget=budget,
                           **(options or {}))

    def rollout(ids):
        p = torch.sigmoid(theta[ids]).unsqueeze(1).expand(len(ids), group_size)
        return torch.bernoulli(p, generator=roll_g), [None] * len(ids)

    curve = [(0, float(torch.sigmoid(theta).mean()))]
    while sampler.budget_left > 0:
        batch = sampler.collect(k, rollout)
        if batch.prompt_ids:
            std = batch.rewards.std(dim=1, correction=0)       # 0 for all-equal groups: no gradient
            ids = torch.tensor(batch.prompt_ids)
            theta.index_add_(0, ids, lr * std / 0.5)
            theta += shared * float((std > 0).sum())
        curve.append((sampler.rollouts_spent, float(torch.sigmoid(theta).mean())))
    return curve


def rollouts_to_reach(curve, target: float) -> float:
    """Rollouts at the first point of ``curve`` [(rollouts, value)] that reaches ``target``; NaN if none."""
    for spent, value in curve:
        if value >= target - 1e-12:
            return float(spent)
    return math.nan


def ratio(a: float, b: float) -> float:
    """a / b for rollouts-to-target; NaN when either was not reached or b is 0 (no signal, not a tie)."""
    if math.isnan(a) or math.isnan(b) or b <= 0:
        return math.nan
    return a / b


def geo_mean_ci(values) -> dict:
    """n reached, geometric mean and 95% t-interval (scipy) of the finite ratios."""
    from scipy import stats

    logs = [math.log(v) for v in values if not math.isnan(v) and v > 0]
    n = len(logs)
    if n == 0:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan}
    m = sum(logs) / n
    if n < 2:
        return {"n": n, "mean": math.exp(m), "low": math.nan, "high": math.nan}
    sem = stats.sem(logs)
    low, high = (m, m) if sem == 0 else stats.t.interval(0.95, n - 1, loc=m, scale=sem)
    return {"n": n, "mean": math.exp(m), "low": math.exp(low), "high": math.exp(high)}


def summarise_targets(curves_by_seed: dict, gains, names) -> dict:
    """Per gain target: per-seed rollouts for every sampler, ratios vs uniform and vs dapo_filter."""
    out = {}
    for gain in gains:
        rows = []
        for seed, curves in curves_by_seed.items():
            target = curves["uniform"][0][1] + gain
            need = {n: rollouts_to_reach(curves[n], target) for n in names}
            rows.append({"seed": seed, "target": target, **{f"rollouts_{n}": need[n] for n in names}})
        per = {n: geo_mean_ci([ratio(r[f"rollouts_{n}"], r["rollouts_uniform"]) for r in rows]) for n in names}
        vs_dapo = {n: geo_mean_ci([ratio(r[f"rollouts_{n}"], r["rollouts_dapo_filter"]) for r in rows])
                   for n in names if "dapo_filter" in names}
        out[f"+{gain:.2f}"] = {"per_seed": rows, "ratio_vs_uniform": per, "ratio_vs_dapo_filter": vs_dapo}
    return out


def fmt(x: float, spec: str = ".0f") -> str:
    return "not reached" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def fmt_ci(c: dict, seeds: int) -> str:
    if c["n"] == 0:
        return f"not reached (0/{seeds} seeds)"
    ci = "" if math.isnan(c["low"]) else f" [{c['low']:.3f}, {c['high']:.3f}]"
    return f"{c['mean']:.3f}{ci} ({c['n']}/{seeds} seeds reached)"


def print_targets(title: str, summary: dict, names, seeds: int) -> None:
    print(f"\n== {title} ==")
    for gain, s in summary.items():
        targets = ", ".join(format(r["target"], ".3f") for r in s["per_seed"])
        print(f"target: mean success {gain} over the start (per seed {targets})")
        print(f"  {'sampler':18} " + " ".join(f"{'seed ' + str(r['seed']):>12}" for r in s["per_seed"])
              + "   ratio vs uniform, geo-mean [95% CI]          vs dapo_filter")
        for n in names:
            cells = " ".join(f"{fmt(r[f'rollouts_{n}']):>12}" for r in s["per_seed"])
            d = s["ratio_vs_dapo_filter"].get(n)
            print(f"  {n:18} {cells}   {fmt_ci(s['ratio_vs_uniform'][n], seeds):44} "
                  f"{fmt_ci(d, seeds) if d else ''}")
        v = s["ratio_vs_uniform"].get("vade")
        vd = s["ratio_vs_dapo_filter"].get("vade")
        if v is not None:
            met_u = v["n"] == seeds and v["mean"] <= 0.7
            met_d = vd is not None and vd["n"] == seeds and vd["mean"] < 1.0
            print(f"  vade: <= 0.7x uniform {'met' if met_u else 'NOT met'}; < dapo_filter "
                  f"{'met' if met_d else 'NOT met'} (a goal counts as met only if every seed reached the target)")


def run_bandit(seeds: int, gains, budget_steps: int) -> dict:
    result = {}
    names = list(BANDIT_SAMPLERS)
    for scen, params in SCENARIOS.items():
        t0 = time.perf_counter()
        curves = {s: {n: bandit_run(BANDIT_SAMPLERS[n][0], s, options=BANDIT_SAMPLERS[n][1],
                                    budget=budget_steps * 16 * 8, **params) for n in names}
                  for s in range(seeds)}
        result[f"bandit_{scen}"] = summarise_targets(curves, gains, names)
        print_targets(f"SYNTHETIC bandit '{scen}' {params} (the kit's model, not evidence about the paper), "
                      f"{seeds} seeds, budget {budget_steps * 16 * 8} rollouts each "
                      f"({time.perf_counter() - t0:.1f}s)", result[f"bandit_{scen}"], names, seeds)
    return result


def run_grpo(seeds: int, budget: int, eval_samples: int, curve_samples: int, eval_every: int, samplers,
             out: Path, lr: float | None = None, n_train: int = 32, k: int = 8) -> dict:
    from pfkit.demos.vade import demo_runs, run_arm, set_dotted

    t0 = time.perf_counter()
    rows = []
    for s in range(seeds):
        for run in demo_runs(out / f"seed{s}", samplers, seed=s, budget=budget):
            run.args.update(eval_samples=eval_samples, curve_samples=curve_samples, eval_every=eval_every,
                            log_difficulty="none")
            for key, v in {"data.init_args.n_train": n_train, "model.init_args.prompts_per_step": k,
                           **({"model.init_args.lr": lr} if lr else {})}.items():
                set_dotted(run.config, key, v)
            r = run_arm(run)
            rows.append({"sampler": run.arm, "seed": s, **r})
            print(f"  seed {s} {run.arm:12} val {r['val_pass_initial']:.3f} -> {r['val_pass_final']:.3f} "
                  f"± {r['val_pass_final_se']:.3f} (n_eval {r['n_eval']}), AUC {r['val_auc']:.3f}, "
                  f"to target {fmt(r['rollouts_to_target'])}, eff. ratio {r['eff_ratio_mean']:.3f}, "
                  f"{r['rollouts_spent']} rollouts", flush=True)
    from pfkit.study import mean_ci

    print(f"\n== GRPO on the embedded code task, {seeds} seeds, budget {budget} rollouts, validation "
          f"64 x {eval_samples} samples ({time.perf_counter() - t0:.0f}s) ==")
    print(f"  {'sampler':12} {'val pass final [95% CI]':>28} {'AUC [95% CI]':>26} {'eff. ratio':>10} "
          f"{'ratio vs uniform (geo)':>34}")
    summary = {}
    for n in samplers:
        rs = [r for r in rows if r["sampler"] == n]
        v = mean_ci([r["val_pass_final"] for r in rs])
        a = mean_ci([r["val_auc"] for r in rs])
        e = mean_ci([r["eff_ratio_mean"] for r in rs])
        q = geo_mean_ci([r["rollouts_to_target_ratio"] for r in rs])
        summary[n] = {"val_pass_final": v, "val_auc": a, "eff_ratio_mean": e, "ratio_vs_uniform": q}
        print(f"  {n:12} {v[1]:.3f} [{v[2]:.3f}, {v[3]:.3f}]{'':>6} {a[1]:.3f} [{a[2]:.3f}, {a[3]:.3f}]{'':>4} "
              f"{e[1]:>10.3f} {fmt_ci(q, seeds):>34}")
    return {"runs": rows, "summary": summary}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("bandit", "grpo", "both"), default="bandit")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--gains", default="0.05,0.10,0.15", help="bandit: target gains of mean success")
    ap.add_argument("--budget-steps", type=int, default=150, help="bandit: budget in uniform steps (16 x 8)")
    ap.add_argument("--budget", type=int, default=768, help="grpo: rollouts per run")
    ap.add_argument("--eval-samples", type=int, default=10, help="grpo: validation samples per prompt")
    ap.add_argument("--curve-samples", type=int, default=1, help="grpo: samples per prompt at curve points")
    ap.add_argument("--eval-every", type=int, default=256, help="grpo: rollouts between curve points")
    ap.add_argument("--lr", type=float, default=None, help="grpo: learning rate (default: the config's)")
    ap.add_argument("--samplers", default=",".join(GRPO_SAMPLERS), help="grpo: comma-separated samplers")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    gains = [float(g) for g in args.gains.split(",")]
    result = {}
    if args.mode in ("bandit", "both"):
        result.update(run_bandit(args.seeds, gains, args.budget_steps))
    if args.mode in ("grpo", "both"):
        samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
        if samplers[0] != "uniform":
            samplers = ["uniform"] + [s for s in samplers if s != "uniform"]
        with tempfile.TemporaryDirectory() as tmp:
            result["grpo"] = run_grpo(args.seeds, args.budget, args.eval_samples, args.curve_samples,
                                      args.eval_every, samplers, Path(tmp), lr=args.lr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
