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
import copy
import json
import resource
import time
from pathlib import Path

import torch

RM_PROMPT_POOL = 2048  # the first 2048 codegen train problems are for reward models; RL prompts come after
RUN_NAMES = {"none": "ppo", "br": "br", "bw": "bw", "bon": "bon"}
LABELS = {"none": "PPO-M (no filter)", "br": "PF-PPO BR", "bw": "PF-PPO BW", "bon": "PF-PPO BoN"}

SETTINGS = {
    False: dict(rm_prompts=128, rm_samples=8, rm_epochs=5, rm_lr=3e-4, r2_prompts=64, steps=12, prompts_per_step=8,
                n_samples=5, max_new_tokens=96, ppo_epochs=2, minibatch_size=8, actor_lr=2e-5, critic_lr=1e-4,
                n_test=128),
    True: dict(rm_prompts=48, rm_samples=6, rm_epochs=3, rm_lr=3e-4, r2_prompts=16, steps=2, prompts_per_step=4,
               n_samples=5, max_new_tokens=64, ppo_epochs=1, minibatch_size=8, actor_lr=2e-5, critic_lr=1e-4,
               n_test=32),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~1-2 min on CPU)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_pfppo-<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategies", default="none,br,bw",
                        help="comma-separated filtration strategies to train (none = PPO-M; bon, br, bw)")
    parser.add_argument("--policy", default="embedded", help="SFT policy folder (default: embedded)")
    parser.add_argument("--reward-model", default="auto",
                        help="'auto' (shipped data/reward if it matches the policy, else train), 'train', or a folder")
    parser.add_argument("--steps", type=int, default=None, help="PPO iterations per run (overrides the preset)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: fastest for the tiny model when the sandbox shares the CPU)")


def _peak_rss_mb() -> float:
    """Peak resident memory of this process and of its (waited-for) children, in MB (Linux ru_maxrss is KB)."""
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(me, kids) / 1024


def _trainer(run_dir: Path | None, progress: bool, **kw):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    opts = dict(max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, accelerator="cpu", devices=1,
                log_every_n_steps=1, enable_checkpointing=False, enable_model_summary=False,
                enable_progress_bar=progress, logger=CSVLogger(run_dir, name="", version="") if run_dir else False,
                default_root_dir=run_dir)
    return pl.Trainer(**{**opts, **kw})


def get_reward_model(policy, tok, cfg: dict, choice: str, seed: int, out: Path, log,
                     policy_path: str = "embedded") -> tuple:
    """(reward model, info dict). Trains one unless a matching shipped/given one exists."""
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
                        "pairs_train": rm.meta.get("pairs_train"), "pairs_val": rm.meta.get("pairs_val")}
        log("reward model: no shipped one for this policy; training one")
        try:
            return train_reward_model(policy, tok, cfg, seed, out, log, policy_path)
        except Exception as e:  # noqa: BLE001 -- e.g. too few passing samples for any pair
            if rm is None:
                raise
            log(f"reward model: training failed ({str(e).splitlines()[0]}); falling back to the shipped one "
                f"({folder}), which was trained from another checkpoint of this policy")
            return rm, {"source": f"{folder} (fallback: trained from another policy checkpoint)",
                        "val_acc": rm.meta.get("val/acc"), "train_seconds": 0.0,
                        "pairs_train": rm.meta.get("pairs_train"), "pairs_val": rm.meta.get("pairs_val")}
    return train_reward_model(policy, tok, cfg, seed, out, log, policy_path)


def train_reward_model(policy, tok, cfg: dict, seed: int, out: Path | None, log,
                       policy_path: str = "embedded") -> tuple:
    """Sample the policy on RM prompts, label by tests, train Bradley-Terry, calibrate; (rm, info)."""
    from pfkit.data.preference import PreferenceDataModule
    from pfkit.modules.reward import RewardModule
    from pfkit.rollout import sample_and_check
    from pfkit.tasks import codegen

    t0 = time.perf_counter()
    problems = codegen.splits(seed)["train"][: min(cfg["rm_prompts"], RM_PROMPT_POOL)]
    samples = sample_and_check(policy, tok, problems, cfg["rm_samples"], max_new_tokens=cfg["max_new_tokens"],
                               temperature=1.0, top_p=0.9, seed=seed + 17, batch_prompts=16,
                               progress="sampling (RM data)")
    dm = PreferenceDataModule(policy=policy_path, samples=samples, val_fraction=0.25, batch_size=16, seed=seed)
    dm.tokenizer = tok
    try:
        dm.setup()
    except ValueError as e:
        from pfkit.errors import UserError

        raise UserError(f"cannot train a reward model for this policy: {e}") from None
    module = RewardModule.from_models(policy, tok, policy=policy_path, lr=cfg["rm_lr"], warmup_steps=10,
                                      likelihood_term=True, save_to=str(out / "reward_model") if out else None)
    torch.manual_seed(seed)
    trainer = _trainer(out / "reward" if out else None, True, max_epochs=cfg["rm_epochs"], limit_val_batches=1.0)
    trainer.fit(module, datamodule=dm)
    acc = float(trainer.callback_metrics.get("val/acc", float("nan")))
    rm = module.rm.eval()
    rm.meta.update({"pairs_train": len(dm.train_pairs), "pairs_val": len(dm.val_pairs),
                    "samples_pass_rate": float(samples["score"].mean())})
    if out:
        rm.save(out / "reward_model", tok)
    info = {"source": "trained in this demo", "val_acc": acc, "pairs_train": len(dm.train_pairs),
            "pairs_val": len(dm.val_pairs), "samples": len(samples),
            "samples_pass_rate": float(samples["score"].mean()), "train_seconds": time.perf_counter() - t0}
    log(f"reward model: {len(dm.train_pairs)} train / {len(dm.val_pairs)} held-out pairs from {len(samples)} "
        f"samples (pass rate {info['samples_pass_rate']:.2f}); held-out pairwise accuracy {acc:.3f}")
    return rm, info


def sft_r2_table(policy, tok, rm, cfg: dict, seed: int, out: Path | None, strategies) -> tuple:
    """Samples of the SFT policy on val problems, scored by RM and tests -> R² per strategy (paper Table 1)."""
    import pandas as pd

    from pfkit.rl.filtration import strategy_table
    from pfkit.rollout import sample_and_check
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    problems = codegen.splits(seed)["val"][: cfg["r2_prompts"]]
    s = sample_and_check(policy, tok, problems, cfg["n_samples"], max_new_tokens=cfg["max_new_tokens"],
                         temperature=1.0, top_p=0.9, seed=seed + 29, batch_prompts=16)
    s["reward"] = rm.score_texts(tok, list(s["prompt"]), list(s["response"])).numpy()
    s["step"] = 0
    s["kept"] = True
    s["advantage"] = float("nan")
    cols = ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "kept", "advantage"]
    s = s[cols]
    if out:
        RunDir(out / "sft_samples").append("rollouts", s, step=0)
    table = strategy_table(pd.DataFrame(s).copy(), list(dict.fromkeys(["none", "bon", "br", "bw", *strategies])),
                           bins=10)
    return table, s


def run_demo(quick: bool = False, out: str | Path | None = None, seed: int = 0, strategies=("none", "br", "bw"),
             policy_path: str = "embedded", reward_model: str = "auto", steps: int | None = None,
             verbose: bool = True, **overrides) -> dict:
    from pfkit.data.preference import CodePromptDataModule
    from pfkit.models import load_policy
    from pfkit.modules.pfppo import PFPPOModule, evaluate_pass_at_1
    from pfkit.rl.filtration import format_table, recommend
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    def log(msg):
        if verbose:
            print(f"[pfppo demo] {msg}", flush=True)

    t_start = time.perf_counter()
    cfg = {**SETTINGS[bool(quick)], **overrides}
    if steps is not None:
        cfg["steps"] = steps
    out = Path(out) if out is not None else None
    if out is None:
        out = Path("runs") / f"demo_pfppo-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    policy, tok = load_policy(policy_path)
    log(f"policy: {policy_path} ({sum(p.numel() for p in policy.parameters()) / 1e6:.2f} M parameters)")

    rm, rm_info = get_reward_model(policy, tok, cfg, reward_model, seed, out, log, policy_path)

    t = time.perf_counter()
    r2, _ = sft_r2_table(policy, tok, rm, cfg, seed, out, strategies)
    log(f"R² between reward and unit-test score on the SFT policy ({cfg['r2_prompts']} val problems x "
        f"{cfg['n_samples']} samples, {time.perf_counter() - t:.0f} s):\n" + format_table(r2))
    best = recommend(r2)
    if best is None:
        log("R² undefined: the unit-test scores do not vary over these samples (all fail or all pass)")
    else:
        log(f"highest R²: {best} (R² guides the choice; it is not a guarantee)")

    test = codegen.splits(seed)["test"][: cfg["n_test"]]
    t = time.perf_counter()
    before = evaluate_pass_at_1(policy, tok, test, max_new_tokens=cfg["max_new_tokens"])
    log(f"held-out pass@1 before RL (greedy, {len(test)} test problems): {before:.3f} ({time.perf_counter() - t:.0f} s)")

    rl_offset = RM_PROMPT_POOL  # RL prompts are disjoint from any reward model's (shipped or trained here)
    n_train = cfg["steps"] * cfg["prompts_per_step"]
    rows = [{"method": "SFT (before RL)", "strategy": None, "pass@1": before, "delta": 0.0}]
    runs = {}
    for s in strategies:
        name = RUN_NAMES.get(s, s)
        run_dir = out / name if out else None
        t = time.perf_counter()
        torch.manual_seed(seed)
        module = PFPPOModule.from_models(
            copy.deepcopy(policy), tok, copy.deepcopy(rm), strategy=s, seed=seed, n_samples=cfg["n_samples"],
            max_new_tokens=cfg["max_new_tokens"], ppo_epochs=cfg["ppo_epochs"], minibatch_size=cfg["minibatch_size"],
            actor_lr=cfg["actor_lr"], critic_lr=cfg["critic_lr"], log_rollouts=run_dir is not None,
            save_policy=False)
        dm = CodePromptDataModule(seed=seed, prompts_per_step=cfg["prompts_per_step"], n_train=n_train,
                                  offset=rl_offset)
        log(f"training {LABELS.get(s, s)} for {cfg['steps']} iterations x {cfg['prompts_per_step']} prompts x "
            f"{cfg['n_samples']} samples -> {run_dir or '(not saved)'}")
        trainer = _trainer(run_dir, verbose, limit_train_batches=cfg["steps"])
        trainer.fit(module, datamodule=dm)
        train_seconds = time.perf_counter() - t
        after = evaluate_pass_at_1(module.policy, tok, test, max_new_tokens=cfg["max_new_tokens"])
        metrics = RunDir(run_dir).metrics() if run_dir else None
        last = module.last_metrics
        kept = float(metrics["train/kept_fraction"].mean()) if metrics is not None else last["kept_fraction"]
        # one step's pass rate is over prompts_per_step x n_samples programs (40 by default): too noisy to
        # show alone, so the table shows the mean over the run
        train_pass = float(metrics["train/pass_rate"].mean()) if metrics is not None else last["pass_rate"]
        r2_row = r2.set_index("strategy").loc[s] if s in set(r2["strategy"]) else None
        row = {"method": LABELS.get(s, s), "strategy": s, "pass@1": after, "delta": after - before,
               "r2_sft": None if r2_row is None else float(r2_row["r2"]),
               "kept_fraction": kept, "train_reward_last": last["reward"], "train_pass_rate_last": last["pass_rate"],
               "train_pass_rate_mean": train_pass,
               "kl_last": last["kl"], "wall_seconds": train_seconds, "run_dir": str(run_dir) if run_dir else None}
        rows.append(row)
        runs[s] = row
        log(f"{LABELS.get(s, s)}: held-out pass@1 {after:.3f} ({after - before:+.3f}), kept {kept:.2f}, "
            f"{train_seconds:.0f} s")
        if run_dir:
            (run_dir / "config.yaml").write_text(json.dumps(dict(module.hparams), indent=2, default=str))
        del module, trainer

    wall = time.perf_counter() - t_start
    summary = {
        "settings": {**cfg, "seed": seed, "quick": quick, "policy": policy_path, "threads": torch.get_num_threads()},
        "reward_model": rm_info,
        "r2_sft": r2.drop(columns=["label"]).to_dict("records"),
        "recommended_strategy": best,
        "pass_at_1": rows,
        "wall_seconds": wall,
        "peak_rss_mb": _peak_rss_mb(),
    }
    if out:
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
        f"{r['strategy']}={r['r2']:.3f}" for r in summary["r2_sft"]) + f" -> highest: {summary['recommended_strategy']}")
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
    try:
        run_demo(quick=args.quick, out=out, seed=args.seed, strategies=strategies, policy_path=args.policy,
                 reward_model=args.reward_model, steps=args.steps)
    except OSError as e:  # e.g. PolicyPathError: a missing/invalid policy folder
        raise UserError(str(e).splitlines()[0]) from None
    print(f"run folders: {out}/ (summary.json; {', '.join(RUN_NAMES.get(s, s) for s in strategies)}; "
          f"sft_samples). Next: pfkit analyze-filtration {out}/sft_samples ; pfkit inspect filtration {out}/"
          f"{RUN_NAMES.get(strategies[-1], strategies[-1])}")
    return 0

