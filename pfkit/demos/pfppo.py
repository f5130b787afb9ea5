"""``pfkit demo pfppo``: the kit's main job. SFT policy -> reward -> PPO-M vs PF-PPO (BR, BW), with intervals.

1. Load the shipped SFT policy (``pfkit.models.load_policy("embedded")``).
2. Reward model: the shipped one in pfkit/assets/reward if it was trained from this policy, else train one here
   (Bradley-Terry on the policy's own samples labelled by the unit tests, passing > failing per prompt)
   and report its pairwise accuracy on held-out prompts' pairs.
3. R² by strategy on the SFT policy (the paper's way of choosing a strategy before PPO): N samples for
   each validation problem, rewards from the RM, scores from the tests; written as ``OUT/sft_samples``
   (a rollouts table, so ``pfkit analyze-filtration OUT/sft_samples`` reproduces the table).
4. A small paired study (:mod:`pfkit.study`, one fresh process per run): every strategy (PPO-M = ``none``,
   BR, BW) under each reward source (by default the controlled-noise oracle ``noisy_middle`` -- the paper's
   hypothesis, reliable at the extremes; ``--sources noisy_middle,model`` adds the learned reward model beside
   it, about 1.7x the time) for several seeds, same prompts and sampling cost per seed; ``OUT/runs/<arm>/seed_<k>`` are normal run folders
   (``pfkit inspect filtration`` opens them).
5. Held-out pass@1 (greedy, test split) per run; the summary prints each arm's mean with its 95% CI over
   seeds and the paired (by seed) difference against PPO-M under the same source, with its CI -- the
   question the demo answers is whether that interval excludes 0. Written to ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

RM_PROMPT_POOL = 2048  # the first 2048 codegen train problems are for reward models; RL prompts come after
STRATEGY_LEVELS = {"none": "ppo_m", "br": "br", "bw": "bw", "bon": "bon"}  # strategy -> the study's level name
LABELS = {"ppo_m": "PPO-M (no filter)", "br": "PF-PPO BR", "bw": "PF-PPO BW", "bon": "PF-PPO BoN", "sft": "SFT"}
SOURCES = {"noisy_middle": {"model.init_args.reward_source": "oracle", "model.init_args.oracle_profile": "noisy_middle"},
           "uniform": {"model.init_args.reward_source": "oracle", "model.init_args.oracle_profile": "uniform"},
           "model": {"model.init_args.reward_source": "model"}}
SOURCE_LABELS = {"noisy_middle": "oracle noisy_middle (reliable at the extremes)",
                 "uniform": "oracle uniform (equally noisy everywhere)", "model": "learned reward model"}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def ppo_configs(quick: bool) -> list[Path]:
    """The LightningCLI configs of a PPO run, base first: configs/pfppo_codegen.yaml + the demo overlays."""
    return [CONFIGS / "pfppo_codegen.yaml", CONFIGS / "demo" / "pfppo.yaml",
            *([CONFIGS / "demo" / "pfppo_quick.yaml"] if quick else [])]


def reward_configs(quick: bool) -> list[Path]:
    """The LightningCLI configs of the demo's reward model: configs/reward_codegen.yaml + the demo overlays."""
    return [CONFIGS / "reward_codegen.yaml", CONFIGS / "demo" / "reward.yaml",
            *([CONFIGS / "demo" / "reward_quick.yaml"] if quick else [])]


def config_args(configs, overrides: dict | None = None) -> list[str]:
    """``-c`` for each config, then ``--key value`` per override (dotted LightningCLI keys)."""
    args = [a for c in configs for a in ("-c", str(c))]
    for k, v in (overrides or {}).items():
        args += [f"--{k}", str(v).lower() if isinstance(v, bool) else str(v)]
    return args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~1-2 min on CPU)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_pfppo-<time>)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (the runs use seed .. seed + seeds - 1)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="paired seeds per arm (default 4; --quick 2): the CIs are over seeds")
    parser.add_argument("--strategies", default="none,br,bw",
                        help="comma-separated filtration strategies to train (none = PPO-M; bon, br, bw)")
    parser.add_argument("--sources", default=None,
                        help="comma-separated reward sources: noisy_middle, uniform (controlled-noise oracles), "
                             "model (the learned reward model); default noisy_middle (fits the 10-minute budget on 2 cores; "
                             "noisy_middle,model puts the learned RM beside it)")
    parser.add_argument("--policy", default="embedded", help="SFT policy folder (default: embedded)")
    parser.add_argument("--reward-model", default="auto",
                        help="'auto' (shipped pfkit/assets/reward if it matches the policy, else train), 'train', or a folder")
    parser.add_argument("--steps", type=int, default=None,
                        help="PPO iterations per run (default: trainer.limit_train_batches of configs/demo/pfppo*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the PPO runs' config, e.g. --set model.init_args.kl_coef=0.05")
    parser.add_argument("--workers", type=int, default=None,
                        help="runs in parallel (default: the number of cores, at most 2; one torch thread each)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the demo process (default 1: fastest for the tiny model when the "
                             "sandbox shares the CPU)")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and of its (waited-for) children, in MB (Linux ru_maxrss is KB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


#: The two sizes that are not LightningCLI keys: R² problems (val split) and held-out pass@1 problems (test split).
EVAL_SIZES = {False: {"r2_prompts": 64, "n_test": 128}, True: {"r2_prompts": 16, "n_test": 32}}


def get_reward_model(policy, tok, choice: str, seed: int, out: Path, log, policy_path: str = "embedded",
                     quick: bool = False) -> tuple:
    """(reward model, info dict, its folder). Trains one unless a matching shipped/given one exists."""
    from pfkit.models import EMBEDDED_RM, ScalarHeadModel, policy_fingerprint

    fp = policy_fingerprint(policy)
    if choice != "train":
        folder = EMBEDDED_RM if choice == "auto" else Path(choice)
        try:
            rm = ScalarHeadModel.load(folder)
        except FileNotFoundError:
            if choice != "auto":
                raise
            rm = None
        if rm is not None and (choice != "auto" or rm.meta.get("policy_fingerprint") == fp):
            log(f"reward model: loaded {folder} (held-out pair accuracy {rm.meta.get('val/acc', float('nan')):.3f})")
            return rm, {"source": str(folder), "val_acc": rm.meta.get("val/acc"), "train_seconds": 0.0,
                        "pairs_train": rm.meta.get("pairs_train"), "pairs_val": rm.meta.get("pairs_val")}, folder
        log("reward model: no shipped one for this policy; training one")
        try:
            return train_reward_model(seed, out, log, policy_path, quick)
        except Exception as e:  # noqa: BLE001 -- e.g. too few passing samples for any pair
            if rm is None:
                raise
            log(f"reward model: training failed ({str(e).splitlines()[0]}); falling back to the shipped one "
                f"({folder}), which was trained from another checkpoint of this policy")
            return rm, {"source": f"{folder} (fallback: trained from another policy checkpoint)",
                        "val_acc": rm.meta.get("val/acc"), "train_seconds": 0.0,
                        "pairs_train": rm.meta.get("pairs_train"), "pairs_val": rm.meta.get("pairs_val")}, folder
    return train_reward_model(seed, out, log, policy_path, quick)


def train_reward_model(seed: int, out: Path, log, policy_path: str = "embedded", quick: bool = False) -> tuple:
    """``pfkit fit`` on configs/reward_codegen.yaml + the demo overlays, in this process: the policy samples
    the RM prompts, the tests label them, Bradley-Terry trains, the RM is calibrated; (rm, info, folder)."""
    from pfkit.cli import make_cli
    from pfkit.errors import UserError
    from pfkit.models import ScalarHeadModel

    t0 = time.perf_counter()
    folder = out / "reward_model"
    cli = make_cli(config_args(reward_configs(quick), {
        "seed_everything": seed, "model.init_args.policy": policy_path, "model.init_args.save_to": folder,
        "data.init_args.policy": policy_path, "data.init_args.seed": seed, "run_dir": out / "reward"}), run=False)
    dm = cli.datamodule
    try:
        dm.setup("fit")
    except ValueError as e:
        raise UserError(f"cannot train a reward model for this policy: {e}") from None
    cli.trainer.fit(cli.model, datamodule=dm)
    acc = float(cli.trainer.callback_metrics.get("val/acc", float("nan")))
    samples = dm.samples
    rm = ScalarHeadModel.load(folder)
    rm.meta.update({"pairs_train": len(dm.train_pairs), "pairs_val": len(dm.val_pairs),
                    "samples_pass_rate": float(samples["score"].mean())})
    rm.save(folder, cli.model.tokenizer)
    info = {"source": "trained in this demo", "val_acc": acc, "pairs_train": len(dm.train_pairs),
            "pairs_val": len(dm.val_pairs), "samples": len(samples),
            "samples_pass_rate": float(samples["score"].mean()), "train_seconds": time.perf_counter() - t0}
    log(f"reward model: {len(dm.train_pairs)} train / {len(dm.val_pairs)} held-out pairs from {len(samples)} "
        f"samples (pass rate {info['samples_pass_rate']:.2f}); held-out pairwise accuracy {acc:.3f}")
    return rm, info, folder


def sft_r2_table(policy, tok, rm, group_size: int, max_new_tokens: int, n_prompts: int, seed: int,
                 out: Path | None, strategies) -> tuple:
    """Samples of the SFT policy on val problems, scored by RM and tests -> R² per strategy (paper Table 1)."""
    from pfkit.rl.filtration import strategy_table
    from pfkit.rollout import sample_and_check
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    problems = codegen.splits(seed)["val"][:n_prompts]
    s = sample_and_check(policy, tok, problems, group_size, max_new_tokens=max_new_tokens, temperature=1.0,
                         top_p=0.9, seed=seed + 29, batch_prompts=16, progress="SFT samples for R²")
    s["reward"] = rm.score_texts(tok, list(s["prompt"]), list(s["response"])).numpy()
    s["step"] = 0
    s["kept"] = True
    s["advantage"] = float("nan")
    cols = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "kept", "advantage"]
    s = s[cols + [c for c in s.columns if c not in cols]]
    if out:
        RunDir(out / "sft_samples").append("rollouts", s, step=0)
    table = strategy_table(s[cols].copy(), list(dict.fromkeys(["none", "bon", "br", "bw", *strategies])), bins=10)
    return table, s


def demo_study(strategies, sources, seeds, rm_folder, policy_path: str, quick: bool, steps: int | None = None,
               overrides: dict | None = None, n_test: int = 128):
    """The demo's runs as a :class:`pfkit.study.Study`: strategy x reward source x seeds, plus the SFT policy's
    own evaluation, paired against PPO-M within each source; evaluation on the test split (greedy)."""
    from pfkit.study import Arm, Study, merge_configs

    cfg = merge_configs(ppo_configs(quick))
    over = {"model.init_args.policy": policy_path, "model.init_args.reward_model": str(rm_folder),
            "data.init_args.offset": RM_PROMPT_POOL, "trainer.enable_progress_bar": False,
            "trainer.enable_model_summary": False, **(overrides or {})}
    if steps is not None:  # every RL prompt once, as the overlays' n_train does for their length
        k = int(over.get("model.init_args.prompts_per_step", cfg["model"]["init_args"]["prompts_per_step"]))
        over.update({"trainer.limit_train_batches": steps, "data.init_args.n_train": steps * k})
    arms = [Arm("sft", args={"train": False}, factors={"strategy": "sft", "source": "none"})]
    for src in sources:
        for strat in strategies:
            level = STRATEGY_LEVELS.get(strat, strat)
            arms.append(Arm(f"{level}-{src}", overrides={"model.init_args.strategy": strat, **SOURCES[src]},
                            factors={"strategy": level, "source": src}))
    return Study(name="demo_pfppo", job="pfkit.demos.pfppo:run_arm", config=cfg, overrides=over,
                 args={"eval_split": "test", "eval_problems": n_test, "eval_samples": 0, "r2_steps": 0},
                 seeds=list(seeds), baseline={"strategy": "ppo_m"},
                 metrics=["pass1_greedy", "train_pass_rate", "kept_fraction", "kl_final"], arms=arms, quick=quick,
                 prediction="paper: BR and BW beat PPO-M when the reward is reliable at the extremes "
                            "(oracle noisy_middle); whether they do here is what the paired intervals say")


def run_demo(quick: bool = False, out: str | Path | None = None, seed: int = 0, strategies=("none", "br", "bw"),
             policy_path: str = "embedded", reward_model: str = "auto", steps: int | None = None,
             verbose: bool = True, overrides: dict | None = None, seeds: int | None = None,
             sources=None, workers: int | None = None) -> dict:
    """The demo in Python; ``overrides``: dotted LightningCLI keys applied to every PPO run's config."""
    import os

    from pfkit.models import load_policy
    from pfkit.rl.filtration import format_table, recommend
    from pfkit.runs import RunDir
    from pfkit.study import format_summary as study_table
    from pfkit.study import run_study, summarize

    def log(msg):
        if verbose:
            print(f"[pfppo demo] {msg}", flush=True)

    t_start = time.perf_counter()
    sizes = EVAL_SIZES[bool(quick)]
    seeds = int(seeds or (2 if quick else 4))
    sources = tuple(sources or ("noisy_middle",))
    workers = int(workers or max(1, min(2, os.cpu_count() or 1)))
    out = Path(out) if out is not None else Path("runs") / f"demo_pfppo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    policy, tok = load_policy(policy_path)
    log(f"policy: {policy_path} ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters)")

    rm, rm_info, rm_folder = get_reward_model(policy, tok, reward_model, seed, out, log, policy_path, quick)
    study = demo_study(strategies, sources, range(seed, seed + seeds), rm_folder, policy_path, quick, steps,
                       overrides, sizes["n_test"])
    resolved = study.config_for(study.arms[-1])  # the sizes every PPO arm shares
    h, n_iter = resolved["model"]["init_args"], int(resolved["trainer"]["limit_train_batches"])
    t = time.perf_counter()
    r2, _ = sft_r2_table(policy, tok, rm, int(h["group_size"]), int(h["max_new_tokens"]), sizes["r2_prompts"], seed,
                         out, strategies)
    log(f"R² between reward and unit-test score on the SFT policy ({sizes['r2_prompts']} val problems x "
        f"{h['group_size']} samples, {time.perf_counter() - t:.0f} s):\n" + format_table(r2))
    best = recommend(r2)
    if best is None:
        log("R² undefined: the unit-test scores do not vary over these samples (all fail or all pass)")
    else:
        log(f"highest binned R²: {best} (R² guides the choice; it is not a guarantee)")
    del policy, rm

    n_runs = len(study.arms) * seeds
    log(f"{len(strategies)} strategies x {len(sources)} reward sources x {seeds} seeds, {n_iter} iterations x "
        f"{h['prompts_per_step']} prompts x {h['group_size']} samples each, + the SFT policy's evaluation: "
        f"{n_runs} runs, {workers} in parallel -> {out / 'runs'}")
    results, errors = run_study(study, out / "runs", workers=workers, log=log)
    if errors:
        from pfkit.errors import UserError

        raise UserError(f"{len(errors)} demo run(s) failed, e.g. {errors[0]}; their error.txt is in the run folder")
    per_arm, paired = summarize(results, study)
    rows = []
    for arm in study.arms:
        g = per_arm[(per_arm.arm == arm.name) & (per_arm.metric == "pass1_greedy")]
        d = paired[(paired.arm == arm.name) & (paired.metric == "pass1_greedy")] if len(paired) else paired
        r = {"arm": arm.name, "method": LABELS.get(arm.factors["strategy"], arm.factors["strategy"]),
             **arm.factors, "seeds": seeds}
        if len(g):
            r.update({"pass@1": float(g["mean"].iloc[0]), "ci_low": float(g["ci_low"].iloc[0]),
                      "ci_high": float(g["ci_high"].iloc[0])})
        if len(d):
            r.update({"delta_vs_ppo_m": float(d["mean_diff"].iloc[0]), "delta_ci_low": float(d["ci_low"].iloc[0]),
                      "delta_ci_high": float(d["ci_high"].iloc[0]), "p": float(d["p"].iloc[0])})
        for m in ("train_pass_rate", "kept_fraction", "kl_final"):
            v = per_arm[(per_arm.arm == arm.name) & (per_arm.metric == m)]
            if len(v):
                r[m] = float(v["mean"].iloc[0])
        rows.append(r)
    wall = time.perf_counter() - t_start
    summary = {
        "settings": {"configs": [str(c.relative_to(CONFIGS.parent)) for c in ppo_configs(quick)],
                     "overrides": {k: str(v) for k, v in (overrides or {}).items()}, "iterations": n_iter,
                     "prompts_per_step": h["prompts_per_step"], "group_size": h["group_size"],
                     "max_new_tokens": h["max_new_tokens"], **sizes, "seeds": list(study.seeds),
                     "sources": list(sources), "workers": workers, "quick": quick, "policy": policy_path,
                     "threads": torch.get_num_threads()},
        "reward_model": rm_info,
        "r2_sft": r2.drop(columns=["label"]).to_dict("records"),
        "recommended_strategy": best,
        "pass_at_1": rows,
        "per_arm": per_arm.to_dict("records"),
        "paired": paired.to_dict("records"),
        "wall_seconds": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }
    RunDir(out).write_summary(summary)
    if verbose:
        print(study_table(study, results, per_arm, paired))
        print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    """The demo's table: pass@1 per arm with its CI over seeds, and Δ vs PPO-M (same source, paired by seed)."""
    st = summary["settings"]
    quick = "  (QUICK: smoke-test sizes, not a result)" if st.get("quick") else ""
    lines = ["", f"PF-PPO demo summary{quick}",
             f"held-out pass@1: greedy, {st['n_test']} test problems per run; {len(st['seeds'])} paired seeds "
             f"{st['seeds']}; {st['iterations']} PPO iterations x {st['prompts_per_step']} prompts x "
             f"{st['group_size']} samples; 95% CI: Student t over seeds",
             f"{'source':<14}{'method':<19}{'pass@1 [95% CI]':>24}{'Δ vs PPO-M [95% CI]':>27}  verdict"]

    def f(x, p=3):
        return f"{x:.{p}f}" if isinstance(x, (int, float)) and x == x else "n/a"

    for r in summary["pass_at_1"]:
        ci = f"{f(r.get('pass@1'))} [{f(r.get('ci_low'))}, {f(r.get('ci_high'))}]"
        if "delta_vs_ppo_m" in r:
            lo, hi = r["delta_ci_low"], r["delta_ci_high"]
            d = f"{r['delta_vs_ppo_m']:+.3f} [{f(lo)}, {f(hi)}]"
            verdict = ("no interval" if lo != lo else "same on all seeds" if lo == hi
                       else "differs" if lo > 0 or hi < 0 else "CI includes 0")
        else:
            d, verdict = "", ""
        lines.append(f"{r['source']:<14}{r['method']:<19}{ci:>24}{d:>27}  {verdict}")
    rmi = summary["reward_model"]
    acc = rmi.get("val_acc")
    lines.append(f"reward model: {rmi.get('source')}; held-out pairwise accuracy "
                 f"{acc:.3f}" if isinstance(acc, float) else f"reward model: {rmi.get('source')}")
    lines.append("R² by strategy on the SFT policy (learned RM): " + ", ".join(
        f"{r['strategy']}={r['r2']:.3f}" for r in summary["r2_sft"])
        + f" -> highest binned R²: {summary['recommended_strategy']}")
    lines.append(f"total wall time {summary['wall_seconds']:.0f} s, peak RSS per process "
                 f"{summary['peak_rss_mb']:.0f} MB ({st['workers']} runs in parallel)")
    return "\n".join(lines)


def main(args) -> int:
    from pfkit.errors import UserError
    from pfkit.rl.filtration import parse_strategies

    try:
        strategies = parse_strategies(args.strategies)
    except ValueError as e:
        raise UserError(f"--strategies: {e}") from None
    sources = None
    if args.sources:
        sources = [x.strip() for x in args.sources.split(",") if x.strip()]
        unknown = [x for x in sources if x not in SOURCES]
        if unknown or not sources:
            raise UserError(f"--sources: unknown {unknown or args.sources!r}; choose from {', '.join(SOURCES)}")
    if args.seeds is not None and args.seeds < 2:
        raise UserError(f"--seeds {args.seeds}: an interval needs at least 2 paired seeds")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) if args.out else Path("runs") / f"demo_pfppo-{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out} already exists and is not empty; pass a new folder")
    if args.reward_model not in ("auto", "train") and not Path(args.reward_model).is_dir():
        raise UserError(f"--reward-model {args.reward_model!r} is not a folder; use auto, train or a saved RM folder")
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: give KEY=VALUE, e.g. --set model.init_args.kl_coef=0.05")
        overrides[key.strip()] = value
    try:
        summary = run_demo(quick=args.quick, out=out, seed=args.seed, strategies=strategies, policy_path=args.policy,
                           reward_model=args.reward_model, steps=args.steps, overrides=overrides, seeds=args.seeds,
                           sources=sources, workers=args.workers)
    except OSError as e:  # e.g. PolicyPathError: a missing/invalid policy folder
        raise UserError(str(e).splitlines()[0]) from None
    last = summary["pass_at_1"][-1]["arm"]
    print(f"run folders: {out}/ (summary.json; runs/<arm>/seed_<k>; sft_samples). Next: pfkit analyze-filtration "
          f"{out}/sft_samples ; pfkit inspect filtration {out}/runs/{last}/seed_{summary['settings']['seeds'][0]}")
    return 0


# ------------------------------------------------------------------------------------------ the study's job
def run_arm(run) -> dict:
    """One (arm, seed) of ``studies/pfppo.yaml``: PPO from the SFT policy on ``run.config`` (the same
    configs/pfppo_codegen.yaml the CLI uses, with the arm's overrides), then held-out pass@1 on problems no
    run trains on or selects from (``codegen.extra_split("study_eval")``): greedy and sampled (``eval_samples``
    per problem at ``eval_temperature``, top-p 1). ``args.train: false`` evaluates the SFT policy itself.

    R² by strategy is measured on the run's first ``r2_steps`` iterations (the policy is still ~SFT): the
    logged rewards of every sample, so it is exact for arms that keep all N (PPO-M) and per reward source.
    """
    import math

    from pfkit.cli import make_cli
    from pfkit.models import load_policy
    from pfkit.modules.pfppo import evaluate_pass_at_1
    from pfkit.rl.filtration import STRATEGIES, strategy_table
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    a = {"train": True, "eval_split": "study_eval", "eval_problems": 1024, "eval_samples": 4,
         "eval_temperature": 1.0, "r2_steps": 5, "r2_bins": 10, **run.args}
    import yaml

    # the study's seed is the run's seed: seed_everything alone leaves the module's own sampling / filter /
    # oracle-noise seed (model.init_args.seed) at the config's value, and every "seed" would be one run
    run.config.setdefault("model", {}).setdefault("init_args", {})["seed"] = int(run.seed)
    cfg = run.run_dir / "study_config.yaml"
    cfg.write_text(yaml.safe_dump(run.config, sort_keys=False))
    out: dict = {}
    if a["train"]:
        cli = make_cli(["-c", str(cfg)], run=False)
        t = time.perf_counter()
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        out["train_s"] = time.perf_counter() - t
        policy, tok, h = cli.model.policy, cli.model.tokenizer, cli.model.hparams
        m = RunDir(run.run_dir).metrics()
        out["iterations"] = int(m["train/rl_step"].dropna().max()) + 1
        out["train_pass_rate"] = float(m["train/pass_rate"].mean())
        out["kept_fraction"] = float(m["train/kept_fraction"].mean())
        out["kl_final"] = float(m["train/kl"].dropna().iloc[-1])
        roll = RunDir(run.run_dir).read("rollouts")
        early = roll[roll["step"] < a["r2_steps"]].reset_index(drop=True)
        if a["r2_steps"] > 0 and h.group_size > 1 and early.groupby(["step", "prompt_id"]).size().min() == h.group_size:
            table = strategy_table(early, STRATEGIES, bins=a["r2_bins"]).set_index("strategy")
            for s in STRATEGIES:
                out[f"r2_{s}"] = float(table.loc[s, "r2"])
                out[f"r2_binned_{s}"] = float(table.loc[s, "r2_binned"])
        max_new = h.max_new_tokens
    else:
        policy, tok = load_policy(run.config["model"]["init_args"].get("policy", "embedded"))
        max_new = run.config["model"]["init_args"].get("max_new_tokens", 96)
    if a["eval_split"] == "study_eval":
        problems = codegen.extra_split("study_eval", int(a["eval_problems"]))
    else:  # a fixed split (the demo: the test split, which no run trains on or selects from)
        problems = codegen.splits(0)[a["eval_split"]][: int(a["eval_problems"])]
    out["pass1_greedy"] = evaluate_pass_at_1(policy, tok, problems, max_new_tokens=max_new)
    n, k = len(problems), int(a["eval_samples"])
    if k > 0:
        out["pass1_sampled"] = evaluate_pass_at_1(policy, tok, problems, samples=k,
                                                  temperature=float(a["eval_temperature"]), top_p=1.0,
                                                  max_new_tokens=max_new, seed=1000 + run.seed)
        out["pass1_sampled_se"] = math.sqrt(out["pass1_sampled"] * (1 - out["pass1_sampled"]) / (n * k))
    out["n_eval"] = n * (1 + k)
    return out
