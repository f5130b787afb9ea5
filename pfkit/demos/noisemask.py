"""The noise-mask protocol as one job, ``run_arm(run)``: what ``pfkit study -c studies/noisemask.yaml`` runs
per (arm, seed), and what ``pfkit demo noisemask`` runs for one seed.

An arm is one of (the ``stage`` job argument and the config's ``model.init_args``):

* ``baseline`` — ``PlainClassifier`` on clean images for pretrain + fine-tune epochs (lr 0.1);
* ``random_mask`` — ``NoiseMaskPretrain(freeze_policy=True)``: the same Beta noise from an untrained,
  frozen policy and base, then fine-tuning: everything but what the policy gradient adds;
* ``faithful`` / ``per_sample`` — noise-mask pretraining (the official loss / textbook REINFORCE), the
  "heated" model, then fine-tuning on clean images (lr 1e-3, linear warm-up);
* ``lr_matched`` — ``faithful`` with ``lr_match=True``: the classifier's gradient is plain ∇CE, so the
  comparison with the baseline is not a learning-rate comparison (``pfkit.noise.reinforce``).

Schedule: every stage-1 and baseline StepLR steps every ``ceil(epochs / 3)`` epochs (the paper: step 30 of 90,
two decays), fine-tuning never decays (the paper's StepLR(30) over 10 epochs); ``average_last`` averages the
final stage's last epochs (the paper's ``weight_averaging.py``).

Metrics (flat, one row per run): held-in test accuracy, macro precision/recall/F1, AUC, balanced
accuracy (``test_*``); the same on ``shift_test`` (seen organs in the modality each never shows in
training: ``shift_*``); unseen organs few-shot macro-F1 by a linear probe on frozen features
(``probe_f1_n{n}``, mean over draws) and by short fine-tuning of the whole network
(``ft_f1_n{n}``); what the policy learned (``mask_*``: Beta entropy, η² and permutation p of E[m] by
class / modality, from the pretraining's last validation epoch); ``n_eval`` = held-in test images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

MODES = ("faithful", "per_sample")  # = pfkit.noise.reinforce.MODES; literal so `pfkit --help` stays light
ROOT = Path(__file__).resolve().parents[2]
STUDY = Path(__file__).resolve().parents[1] / "studies" / "noisemask.yaml"  # package data (a wheel has it)
# job arguments the study YAML may leave out (the YAML's `args:` is where the protocol is set)
JOB_DEFAULTS = dict(stage="noisemask", finetune_epochs=4, finetune_lr=1e-3, finetune_warmup=2, average_last=0,
                    shots=[16, 32, 64, 128, 256], repeats=3, curve_steps=40, curve_lr=1e-3)
STAGES = ("baseline", "noisemask")


def resolve_data_path(path: str) -> str:
    """``shared:REL`` -> REL under $PFKIT_SHARED_DATA (default: the project's ``../shared/data``)."""
    if path.startswith("shared:"):
        base = Path(os.environ.get("PFKIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
        return str(base / path.split(":", 1)[1])
    return path


def _fit(module, dm, run: Path, epochs: int, seed: int):
    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    seed_everything(seed, verbose=False)
    trainer = Trainer(max_epochs=epochs, logger=CSVLogger(str(run), name="", version=""), default_root_dir=str(run),
                      callbacks=[ModelCheckpoint(dirpath=str(run / "checkpoints"), save_last=True, save_top_k=0)],
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
                      num_sanity_val_steps=0, accelerator="cpu" if not torch.cuda.is_available() else "auto",
                      devices=1)
    trainer.fit(module, dm)
    return trainer


def _logits(model, images, batch_size: int = 256):
    import torch

    was = model.training
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def _scores(model, dm, group: str, prefix: str) -> dict:
    from pfkit.noise.metrics import classification_metrics

    m = classification_metrics(_logits(model, dm.normalise(dm.data.images[group])), dm.data.labels[group],
                               dm.num_classes)
    return {f"{prefix}_{k}": v for k, v in m.items()}


def _step(epochs: int) -> int:
    """StepLR period: two decays within the run, at 1/3 and 2/3 (the paper: step 30 of 90 epochs)."""
    return max(1, -(-epochs // 3))


def run_arm(run) -> dict:
    """One (arm, seed) of the noise-mask study (``run``: a ``pfkit.study.RunSpec``); returns flat metrics."""
    import numpy as np
    import pandas as pd
    import torch

    from pfkit.cli import quiet
    from pfkit.data.images import ImageNpzDataModule
    from pfkit.modules.noisemask import NoiseMaskFinetune, NoiseMaskPretrain, PlainClassifier
    from pfkit.noise.fewshot import extract_features, few_shot, finetune_curve

    quiet()
    t0 = time.time()
    a = {**JOB_DEFAULTS, **(run.args or {})}
    if a.get("threads"):  # on a shared CPU one thread per run wastes less than the runner's cores // workers
        torch.set_num_threads(int(a["threads"]))
    if a["stage"] not in STAGES:
        raise ValueError(f"job argument stage={a['stage']!r}; choose one of {STAGES}")
    cfg, seed, out = run.config, int(run.seed), Path(run.run_dir)
    model_kw = dict(cfg["model"]["init_args"])
    data_kw = dict(cfg["data"]["init_args"]) | {"seed": seed}  # each seed its own subset and augmentation
    data_kw["path"] = resolve_data_path(str(data_kw.get("path", "synthetic")))
    E, F_ = int(cfg["trainer"]["max_epochs"]), int(a["finetune_epochs"])
    arch = {k: model_kw[k] for k in ("arch", "widths", "stem_stride") if k in model_kw}

    def datamodule():
        return ImageNpzDataModule(**data_kw)

    dm = datamodule()
    dm.setup()
    res: dict = {"n_train": len(dm.data.labels["train"]), "n_eval": len(dm.data.labels["test"])}
    if a["stage"] == "baseline":
        base = PlainClassifier(**arch, lr=model_kw.get("lr", 0.1), lr_step=_step(E + F_),
                               average_last=int(a["average_last"]))
        _fit(base, dm, out / "baseline", E + F_, seed)
        final, heated = base.classifier, None
    else:
        pre = NoiseMaskPretrain(**(model_kw | {"lr_step": _step(E)}))
        trainer = _fit(pre, dm, out / "pretrain", E, seed)
        heated = pre.classifier
        cm = trainer.callback_metrics
        for k in ("mask_entropy", "mask_image_std", "mask_class_eta2", "mask_class_p", "mask_modality_eta2",
                  "mask_modality_p", "masked_acc"):
            if f"val/{k}" in cm:
                res[k] = float(cm[f"val/{k}"])
        res["heated_test_acc"] = _scores(heated, dm, "test", "h")["h_acc"]
        ft = NoiseMaskFinetune(checkpoint=str(out / "pretrain" / "checkpoints" / "last.ckpt"), **arch,
                               lr=float(a["finetune_lr"]), warmup_epochs=int(a["finetune_warmup"]),
                               lr_step=max(30, F_ + 1), average_last=int(a["average_last"]))
        _fit(ft, datamodule(), out / "finetune", F_, seed)
        final = ft.classifier
    res |= _scores(final, dm, "test", "test")
    if "shift_test" in dm.data.images:
        res |= _scores(final, dm, "shift_test", "shift")
        res["n_shift"] = len(dm.data.labels["shift_test"])
    if dm.data.has_unseen:
        px, tx = dm.normalise(dm.data.images["unseen_train"]), dm.normalise(dm.data.images["unseen_test"])
        py, ty = dm.data.labels["unseen_train"], dm.data.labels["unseen_test"]
        shots = [int(n) for n in a["shots"]]
        probe = pd.DataFrame(few_shot(extract_features(final, px), py, extract_features(final, tx), ty,
                                      shots=shots, repeats=int(a["repeats"]), seed=seed))
        curve = pd.DataFrame(finetune_curve(final, px, py, tx, ty, shots=shots, steps=int(a["curve_steps"]),
                                            lr=float(a["curve_lr"]), seed=seed))
        for n, v in probe.groupby("n")["macro_f1"].mean().items():
            res[f"probe_f1_n{n}"] = float(v)
        for row in curve.itertuples():
            res[f"ft_f1_n{row.n}"] = float(row.macro_f1)
        res["n_unseen_test"] = len(ty)
        probe.assign(eval="probe").to_csv(out / "fewshot_probe.csv", index=False)
        curve.assign(eval="finetune").to_csv(out / "fewshot_finetune.csv", index=False)
    res["seconds"] = round(time.time() - t0, 1)
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in res.items()}


EPOCH_TRAIN = ("train/reward", "train/ce_epoch", "train/loss_epoch", "train/beta_entropy", "train/mask_mean",
               "train/acc", "val/acc", "val/masked_acc")


def epoch_table(study_dir: str | os.PathLike) -> pd.DataFrame:  # noqa: F821
    """What the policy did, per epoch, for every pretraining run of a study folder: the ``mask_stats`` rows
    (Beta entropy, E[m] spread, η² and p by class / modality) joined with the epoch-level training curves
    (the policy's reward −CE, the loss, accuracy). One row per (arm, seed, epoch)."""
    import pandas as pd

    from pfkit.runs import RunDir

    rows = []
    for pre in sorted(Path(study_dir).glob("*/seed_*/pretrain")):
        arm, seed = pre.parent.parent.name, int(pre.parent.name.split("_", 1)[1])
        run = RunDir(pre)
        stats = run.read("mask_stats") if run.has_table("mask_stats") else pd.DataFrame({"epoch": []})
        m = run.metrics()
        cols = [c for c in EPOCH_TRAIN if c in m.columns]
        curves = m.groupby("epoch")[cols].mean().reset_index() if cols else pd.DataFrame({"epoch": []})
        curves.columns = [c.replace("/", "_") for c in curves.columns]
        frame = curves.merge(stats, on="epoch", how="outer")
        rows.append(frame.assign(arm=arm, seed=seed))
    if not rows:
        raise FileNotFoundError(f"{study_dir} has no <arm>/seed_<k>/pretrain run folders; point at the --out "
                                f"folder of `pfkit study -c studies/noisemask.yaml`")
    out = pd.concat(rows, ignore_index=True)
    return out[["arm", "seed", "epoch"] + [c for c in out.columns if c not in ("arm", "seed", "epoch")]]


# ============================================================================================== demo
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="the study's smoke-test sizes (~2 min on CPU)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_noisemask-<time>)")
    parser.add_argument("--data", default=None,
                        help="also run on this MedMNIST-format npz (e.g. /work/shared/data/medmnist/pneumoniamnist.npz)")
    parser.add_argument("--arms", default=None,
                        help="comma-separated arms (default: every arm of studies/noisemask.yaml)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _table(rows: list[dict]) -> str:
    cols = [("test_acc", "test acc"), ("test_f1", "macro-F1"), ("test_auc", "AUC"), ("shift_acc", "shift acc"),
            ("probe_f1_n64", "probe F1@64"), ("ft_f1_n64", "ft F1@64"), ("mask_entropy", "Beta H"),
            ("mask_class_p", "class p")]
    w = max(14, *(len(r["arm"]) + 2 for r in rows))
    lines = [f"{'arm':<{w}}" + "".join(f"{h:>12}" for _, h in cols)]
    for r in rows:
        lines.append(f"{r['arm']:<{w}}" + "".join(
            f"{r[k]:>12.3f}" if isinstance(r.get(k), float) and not math.isnan(r[k]) else f"{'-':>12}" for k, _ in cols))
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(rows)
    fs = [{"dataset": r["dataset"], "arm": r["arm"], "eval": ev, "n": int(k.rsplit("_n", 1)[1]), "macro_f1": v}
          for r in rows for k, v in r.items() for ev in ("probe", "ft")
          if k.startswith(f"{ev}_f1_n") and isinstance(v, float) and not math.isnan(v)]
    ncols = 2 if fs else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    sns.barplot(df, x="dataset", y="test_f1", hue="arm", ax=axes[0, 0])
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].set_title("held-in test macro-F1 (one seed)")
    if fs:
        sns.lineplot(pd.DataFrame(fs), x="n", y="macro_f1", hue="arm", style="eval", marker="o", ax=axes[0, 1])
        axes[0, 1].set_xscale("log", base=2)
        axes[0, 1].set_title("unseen concepts: few-shot macro-F1")
        axes[0, 1].set_xlabel("labelled samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    """One seed of every arm of studies/noisemask.yaml (its settings: the study's YAML and base config)."""
    from dataclasses import asdict

    import pandas as pd
    import torch

    from pfkit.cli import UserError, quiet
    from pfkit.data.images import NpzFormatError, load_npz
    from pfkit.runs import RunDir
    from pfkit.study import execute, load_study

    quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.data:
        try:
            load_npz(args.data)
        except (NpzFormatError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
    study = load_study(STUDY, quick=args.quick)
    arms = study.arms
    if args.arms:
        want = [s.strip() for s in args.arms.split(",") if s.strip()]
        names = [a.name for a in arms]
        unknown = [w for w in want if w not in names]
        if unknown:
            raise UserError(f"--arms: unknown arm(s) {unknown}; choose from {', '.join(names)}")
        arms = [a for a in arms if a.name in want]
    out = Path(args.out or f"runs/demo_noisemask-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    run.config_path.write_text(json.dumps({"study": str(STUDY), "quick": bool(args.quick), "seed": args.seed,
                                           "data": args.data, "arms": [a.name for a in arms]}, indent=2) + "\n")
    study.arms, study.seeds = arms, [int(args.seed)]
    datasets = [("synthetic", None)] + ([(Path(args.data).stem, args.data)] if args.data else [])
    rows, t0 = [], time.time()
    for name, path in datasets:
        if path is not None:
            study.overrides = {**study.overrides, "data.init_args.path": path}
        for spec in study.runs(out / name):
            print(f"[{name}] {spec.arm} ...", flush=True)
            row = execute(asdict(spec) | {"run_dir": str(spec.run_dir)}, study.job, threads=args.threads)
            rows.append({"dataset": name, **row})
            print(f"[{name}] {spec.arm}: test acc {row['test_acc']:.3f}, macro-F1 {row['test_f1']:.3f}, "
                  f"{row['wall_s']:.0f} s", flush=True)
    wall = time.time() - t0
    table = "\n\n".join(f"[{name}] seed {args.seed} only: a demonstration, not a result (studies/noisemask.yaml "
                        f"has the seeded study)\n" + _table([r for r in rows if r["dataset"] == name])
                        for name, _ in datasets)
    print("\n" + table)
    pd.DataFrame(rows).to_csv(out / "results.csv", index=False)
    _plot(rows, out / "summary.png")
    run.write_summary({"quick": bool(args.quick), "wall_seconds": wall, "results": rows, "table": table})
    print(f"\nwall time {wall:.0f}s; wrote {out}/summary.json, results.csv, summary.png and run folders "
          f"({', '.join(n for n, _ in datasets)}/<arm>/seed_{args.seed}/)")
    return 0


if __name__ == "__main__":  # python -m pfkit.demos.noisemask epochs STUDY_DIR OUT.csv
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "epochs":
        sys.exit("usage: python -m pfkit.demos.noisemask epochs STUDY_DIR OUT.csv  (per-epoch policy table)")
    table = epoch_table(sys.argv[2])
    table.to_csv(sys.argv[3], index=False, float_format="%.6g")
    print(f"wrote {sys.argv[3]}: {len(table)} rows ({table.arm.nunique()} arms, {table.seed.nunique()} seeds)")
