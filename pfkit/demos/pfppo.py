"""``pfkit demo pfppo``: the kit's main job. SFT policy -> reward model -> PPO vs PF-PPO, end to end on CPU.

1. Load the shipped SFT policy (``pfkit.models.load_policy("embedded")``).
2. Reward model: the shipped one in data/reward if it was trained from this policy, else train one here
   (Bradley-Terry on the policy's own samples labelled by the unit tests, passing > failing per prompt)
   and report its pairwise accuracy on held-out prompts' pairs.
3. R² by strategy on the SFT policy (the paper's way of choosing a strategy before PPO): N samples for
   each validation problem, rewards from the RM, scores from the tests; written as ``OUT/sft_samples``
   (a rollouts table, so ``pfkit analyze-filtration OUT/sft_samples`` reproduces the table).
4. PPO-M (``strategy: none``) and PF-PPO (BR, BW) from the same policy, seed and number of iterations
   (same prompts, same sampling and RM cost; PF-PPO trains on ~2 of N samples): ``OUT/ppo``, ``OUT/br``,
   ``OUT/bw``, each with rollouts.parquet + metrics.csv (open them with ``pfkit inspect filtration``).
5. Held-out pass@1 (greedy, test split) before and after each run; the table is printed and written to
   ``OUT/summary.json``.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

RM_PROMPT_POOL = 2048  # the first 2048 codegen train problems are for reward models; RL prompts come after
RUN_NAMES = {"none": "ppo", "br": "br", "bw": "bw", "bon": "bon"}
LABELS = {"none": "PPO-M (no filter)", "br": "PF-PPO BR", "bw": "PF-PPO BW", "bon": "PF-PPO BoN"}
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
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default="none,br,bw",
                        help="comma-separated filtration strategies to train (none = PPO-M; bon, br, bw)")
    parser.add_argument("--policy", default="embedded", help="SFT policy folder (default: embedded)")
    parser.add_argument("--reward-model", default="auto",
                        help="'auto' (shipped data/reward if it matches the policy, else train), 'train', or a folder")
    parser.add_argument("--steps", type=int, default=None,
                        help="PPO iterations per run (default: trainer.limit_train_batches of configs/demo/pfppo*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key of the PPO runs' config, e.g. --set model.init_args.kl_coef=0.05")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for the tiny model when the sandbox shares the CPU)")


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
                         top_p=0.9, seed=seed + 29, batch_prompts=16)
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


def run_demo(quick: bool = False, out: str | Path | None = None, seed: int = 0, strategies=("none", "br", "bw"),
             policy_path: str = "embedded", reward_model: str = "auto", steps: int | None = None,
             verbose: bool = True, overrides: dict | None = None) -> dict:
    """The demo in Python; ``overrides``: dotted LightningCLI keys applied to every PPO run's config."""
    from pfkit.cli import make_cli
    from pfkit.models import load_policy
    from pfkit.modules.pfppo import evaluate_pass_at_1
    from pfkit.rl.filtration import format_table, recommend
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    def log(msg):
        if verbose:
            print(f"[pfppo demo] {msg}", flush=True)

    t_start = time.perf_counter()
    sizes = EVAL_SIZES[bool(quick)]
    out = Path(out) if out is not None else Path("runs") / f"demo_pfppo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    policy, tok = load_policy(policy_path)
    log(f"policy: {policy_path} ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters)")

    rm, rm_info, rm_folder = get_reward_model(policy, tok, reward_model, seed, out, log, policy_path, quick)

    def ppo_cli(strategy: str):
        over = {"seed_everything": seed, "model.init_args.policy": policy_path,
                "model.init_args.reward_model": rm_folder, "model.init_args.strategy": strategy,
                "model.init_args.seed": seed, "data.init_args.seed": seed, "data.init_args.offset": RM_PROMPT_POOL,
                "trainer.enable_progress_bar": verbose, "run_dir": out / RUN_NAMES.get(strategy, strategy),
                **(overrides or {})}
        if steps is not None:
            over["trainer.limit_train_batches"] = steps
        cli = make_cli(config_args(ppo_configs(quick), over), run=False)
        if steps is not None:  # every RL prompt once, as the overlays' n_train does for their length
            cli.datamodule.hparams.n_train = steps * cli.model.hparams.prompts_per_step
        return cli

    cli = ppo_cli(strategies[0])
    h = cli.model.hparams
    n_iter = int(cli.trainer.limit_train_batches)
    t = time.perf_counter()
    r2, _ = sft_r2_table(policy, tok, rm, h.group_size, h.max_new_tokens, sizes["r2_prompts"], seed, out, strategies)
    log(f"R² between reward and unit-test score on the SFT policy ({sizes['r2_prompts']} val problems x "
        f"{h.group_size} samples, {time.perf_counter() - t:.0f} s):\n" + format_table(r2))
    best = recommend(r2)
    if best is None:
        log("R² undefined: the unit-test scores do not vary over these samples (all fail or all pass)")
    else:
        log(f"highest binned R²: {best} (R² guides the choice; it is not a guarantee)")

    test = codegen.splits(seed)["test"][: sizes["n_test"]]
    t = time.perf_counter()
    before = evaluate_pass_at_1(policy, tok, test, max_new_tokens=h.max_new_tokens)
    log(f"held-out pass@1 before RL (greedy, {len(test)} test problems): {before:.3f} ({time.perf_counter() - t:.0f} s)")

    rows = [{"method": "SFT (before RL)", "strategy": None, "pass@1": before, "delta": 0.0}]
    for s in strategies:
        cli = cli if s == strategies[0] else ppo_cli(s)
        module, run_dir = cli.model, out / RUN_NAMES.get(s, s)
        t = time.perf_counter()
        log(f"training {LABELS.get(s, s)} for {n_iter} iterations x {h.prompts_per_step} prompts x "
            f"{h.group_size} samples -> {run_dir}")
        cli.trainer.fit(module, datamodule=cli.datamodule)
        train_seconds = time.perf_counter() - t
        after = evaluate_pass_at_1(module.policy, tok, test, max_new_tokens=h.max_new_tokens)
        metrics = RunDir(run_dir).metrics()
        last = module.last_metrics
        kept = float(metrics["train/kept_fraction"].mean())
        # one step's pass rate is over prompts_per_step x group_size programs (40 by default): too noisy to
        # show alone, so the table shows the mean over the run
        train_pass = float(metrics["train/pass_rate"].mean())
        r2_row = r2.set_index("strategy").loc[s] if s in set(r2["strategy"]) else None
        row = {"method": LABELS.get(s, s), "strategy": s, "pass@1": after, "delta": after - before,
               "r2_sft": None if r2_row is None else float(r2_row["r2"]),
               "kept_fraction": kept, "train_reward_last": last["reward"], "train_pass_rate_last": last["pass_rate"],
               "train_pass_rate_mean": train_pass,
               "kl_last": last["kl"], "wall_seconds": train_seconds, "run_dir": str(run_dir)}
        rows.append(row)
        log(f"{LABELS.get(s, s)}: held-out pass@1 {after:.3f} ({after - before:+.3f}), kept {kept:.2f}, "
            f"{train_seconds:.0f} s")
        del module, cli

    wall = time.perf_counter() - t_start
    summary = {
        "settings": {"configs": [str(c.relative_to(CONFIGS.parent)) for c in ppo_configs(quick)],
                     "overrides": {k: str(v) for k, v in (overrides or {}).items()}, "iterations": n_iter,
                     "prompts_per_step": h.prompts_per_step, "group_size": h.group_size,
                     "max_new_tokens": h.max_new_tokens, **sizes, "seed": seed, "quick": quick,
                     "policy": policy_path, "threads": torch.get_num_threads()},
        "reward_model": rm_info,
        "r2_sft": r2.drop(columns=["label"]).to_dict("records"),
        "recommended_strategy": best,
        "pass_at_1": rows,
        "wall_seconds": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }
    RunDir(out).write_summary(summary)
    if verbose:
        print(format_summary(summary))
    return summary


def format_summary(summary: dict) -> str:
    lines = ["", "PF-PPO demo summary (held-out pass@1: greedy, test split)",
             f"{'method':<20}{'pass@1':>8}{'Δ':>8}{'R² (SFT)':>10}{'kept':>7}{'train pass':>12}{'wall s':>8}",
             f"{'':<53}{'(run mean)':>12}"]
    for r in summary["pass_at_1"]:
        def f(x, w, p=3):
            return f"{x:>{w}.{p}f}" if isinstance(x, (int, float)) and x == x else f"{'-':>{w}}"
        lines.append(f"{r['method']:<20}{f(r['pass@1'], 8)}{f(r.get('delta'), 8)}{f(r.get('r2_sft'), 10)}"
                     f"{f(r.get('kept_fraction'), 7, 2)}{f(r.get('train_pass_rate_mean'), 12)}"
                     f"{f(r.get('wall_seconds'), 8, 0)}")
    rmi = summary["reward_model"]
    acc = rmi.get("val_acc")
    lines.append(f"reward model: {rmi.get('source')}; held-out pairwise accuracy "
                 f"{acc:.3f}" if isinstance(acc, float) else f"reward model: {rmi.get('source')}")
    lines.append("R² by strategy on the SFT policy: " + ", ".join(
        f"{r['strategy']}={r['r2']:.3f}" for r in summary["r2_sft"])
        + f" -> highest binned R²: {summary['recommended_strategy']}")
    lines.append(f"total wall time {summary['wall_seconds']:.0f} s, peak RSS {summary['peak_rss_mb']:.0f} MB "
                 f"(torch threads {summary['settings']['threads']})")
    return "\n".join(lines)


def main(args) -> int:
    from pfkit.errors import UserError
    from pfkit.rl.filtration import parse_strategies

    try:
        strategies = parse_strategies(args.strategies)
    except ValueError as e:
        raise UserError(f"--strategies: {e}") from None
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
        run_demo(quick=args.quick, out=out, seed=args.seed, strategies=strategies, policy_path=args.policy,
                 reward_model=args.reward_model, steps=args.steps, overrides=overrides)
    except OSError as e:  # e.g. PolicyPathError: a missing/invalid policy folder
        raise UserError(str(e).splitlines()[0]) from None
    print(f"run folders: {out}/ (summary.json; {', '.join(RUN_NAMES.get(s, s) for s in strategies)}; "
          f"sft_samples). Next: pfkit analyze-filtration {out}/sft_samples ; pfkit inspect filtration {out}/"
          f"{RUN_NAMES.get(strategies[-1], strategies[-1])}")
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

    a = {"train": True, "eval_problems": 1024, "eval_samples": 4, "eval_temperature": 1.0, "r2_steps": 5,
         "r2_bins": 10, **run.args}
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
        if h.group_size > 1 and early.groupby(["step", "prompt_id"]).size().min() == h.group_size:
            table = strategy_table(early, STRATEGIES, bins=a["r2_bins"]).set_index("strategy")
            for s in STRATEGIES:
                out[f"r2_{s}"] = float(table.loc[s, "r2"])
                out[f"r2_binned_{s}"] = float(table.loc[s, "r2_binned"])
        max_new = h.max_new_tokens
    else:
        policy, tok = load_policy(run.config["model"]["init_args"].get("policy", "embedded"))
        max_new = run.config["model"]["init_args"].get("max_new_tokens", 96)
    problems = codegen.extra_split("study_eval", int(a["eval_problems"]))
    out["pass1_greedy"] = evaluate_pass_at_1(policy, tok, problems, max_new_tokens=max_new)
    out["pass1_sampled"] = evaluate_pass_at_1(policy, tok, problems, samples=int(a["eval_samples"]),
                                              temperature=float(a["eval_temperature"]), top_p=1.0,
                                              max_new_tokens=max_new, seed=1000 + run.seed)
    n = len(problems)
    out["pass1_sampled_se"] = math.sqrt(out["pass1_sampled"] * (1 - out["pass1_sampled"]) / (n * a["eval_samples"]))
    out["n_eval"] = n * (1 + int(a["eval_samples"]))
    return out
