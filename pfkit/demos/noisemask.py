"""``pfkit demo noisemask``: baseline vs noise-mask pretraining -> fine-tuning, plus unseen-concept few-shot.

For each dataset (the embedded synthetic multi-modal/multi-organ set; PneumoniaMNIST or any MedMNIST
npz with ``--data``):

1. **baseline** — ``PlainClassifier`` on clean images for pretrain + fine-tune epochs (lr 0.1);
2. **pretrain** — ``NoiseMaskPretrain`` (classifier + mask policy, REINFORCE, ``--mode``), the heated model;
3. **finetune** — ``NoiseMaskFinetune`` from the heated checkpoint on clean images (lr 1e-3, warm-up).

Test accuracy / macro-F1 of each; on the synthetic set, frozen features of each initialisation (random,
baseline, heated, heated+fine-tuned) are probed on the held-out organ classes with 16–256 labelled
samples. Writes ``OUT/<dataset>/<stage>/`` run folders (metrics.csv, checkpoints, masks/), ``OUT/summary.json``,
``OUT/fewshot.csv`` and ``OUT/summary.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

MODES = ("faithful", "per_sample")  # = pfkit.noise.reinforce.MODES; literal so `pfkit --help` stays light

QUICK = dict(epochs=2, finetune_epochs=1, train_subset=384, eval_subset=192, shots=(16, 64, 256), repeats=2)
FULL = dict(epochs=8, finetune_epochs=4, train_subset=None, eval_subset=None, shots=(16, 32, 64, 128, 256),
            repeats=5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="CI-sized run (~1–2 min on CPU)")
    parser.add_argument("--out", default=None, help="output folder (default runs/demo_noisemask-<time>)")
    parser.add_argument("--data", default=None,
                        help="also run on this MedMNIST-format npz (e.g. /work/shared/data/medmnist/pneumoniamnist.npz)")
    parser.add_argument("--mode", default="faithful", choices=MODES, help="REINFORCE form (default: faithful)")
    parser.add_argument("--epochs", type=int, default=None, help="pretraining epochs (baseline gets + fine-tune)")
    parser.add_argument("--finetune-epochs", type=int, default=None)
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning lr (paper: 1e-3)")
    parser.add_argument("--widths", default="8,16,32,64",
                        help="classifier ResNet stage widths (CPU-sized default; configs use 16,32,64,128)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def _quiet() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|LeafSpec|log_every_n_steps|"
                                              "litlogger|litmodels).*")


def _fit(module, dm, run: Path, epochs: int, seed: int):
    import torch
    from lightning.pytorch import Trainer, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    seed_everything(seed, verbose=False)
    trainer = Trainer(max_epochs=epochs, logger=CSVLogger(str(run), name="", version=""), default_root_dir=str(run),
                      callbacks=[ModelCheckpoint(dirpath=str(run / "checkpoints"), save_last=True)],
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=10,
                      num_sanity_val_steps=0, accelerator="cpu" if not torch.cuda.is_available() else "auto",
                      devices=1)
    t = time.time()
    trainer.fit(module, dm)
    return trainer, time.time() - t


def _scores(model, dm, split: str) -> dict:
    from pfkit.noise.fewshot import macro_f1, predict

    x = dm.normalise(dm.data.images[split])
    y = dm.data.labels[split]
    pred = predict(model, x).numpy()
    return {"acc": float((pred == y).mean()), "macro_f1": macro_f1(pred, y, dm.data.num_classes)}


def run_dataset(name: str, path: str, out: Path, cfg: dict, args) -> dict:
    import torch

    from pfkit.data.images import ImageNpzDataModule
    from pfkit.modules.noisemask import NoiseMaskFinetune, NoiseMaskPretrain, PlainClassifier
    from pfkit.noise import Classifier
    from pfkit.noise.fewshot import extract_features, few_shot

    widths = tuple(int(w) for w in args.widths.split(","))
    E, F_ = cfg["epochs"], cfg["finetune_epochs"]
    lr_step = max(1, (E + F_) * 2 // 3)

    def datamodule():
        return ImageNpzDataModule(path, batch_size=args.batch_size, train_subset=cfg["train_subset"],
                                  eval_subset=cfg["eval_subset"], seed=args.seed)

    dm = datamodule()
    dm.setup()
    print(f"[{name}] {path}: train {len(dm.data.labels['train'])}, test {len(dm.data.labels['test'])}, "
          f"{dm.num_classes} classes, {dm.data.image_size} px, {dm.in_channels} channel(s)", flush=True)
    res: dict = {"dataset": name, "path": path, "epochs": {"pretrain": E, "finetune": F_, "baseline": E + F_}}
    models: dict[str, torch.nn.Module] = {}

    base = PlainClassifier(arch="resnet", widths=widths, lr=0.1, lr_step=lr_step)
    _, t_base = _fit(base, dm, out / name / "baseline", E + F_, args.seed)
    models["baseline"] = base.classifier
    print(f"[{name}] baseline {E + F_} epochs: {t_base:.0f}s", flush=True)

    pre = NoiseMaskPretrain(arch="resnet", widths=widths, mode=args.mode, lr=0.1, policy_lr=0.01, lr_step=lr_step)
    tr, t_pre = _fit(pre, datamodule(), out / name / "pretrain", E, args.seed)
    models["heated"] = pre.classifier
    ckpt = out / name / "pretrain" / "checkpoints" / "last.ckpt"
    print(f"[{name}] noise-mask pretrain ({args.mode}) {E} epochs: {t_pre:.0f}s "
          f"(val masked acc {float(tr.callback_metrics.get('val/masked_acc', float('nan'))):.3f})", flush=True)

    ft = NoiseMaskFinetune(checkpoint=str(ckpt), arch="resnet", widths=widths, lr=args.finetune_lr,
                           warmup_epochs=max(1, F_ // 2), lr_step=lr_step)
    _, t_ft = _fit(ft, datamodule(), out / name / "finetune", F_, args.seed)
    models["heated+finetune"] = ft.classifier
    print(f"[{name}] fine-tune {F_} epochs: {t_ft:.0f}s", flush=True)

    res["seconds"] = {"baseline": t_base, "pretrain": t_pre, "finetune": t_ft}
    res["test"] = {k: _scores(m, dm, "test") for k, m in models.items()}

    if dm.data.has_unseen:
        torch.manual_seed(args.seed)
        models = {"random init": Classifier(dm.num_classes, dm.in_channels, widths=widths), **models}
        rows = []
        px, tx = dm.normalise(dm.data.images["unseen_train"]), dm.normalise(dm.data.images["unseen_test"])
        for init, m in models.items():
            r = few_shot(extract_features(m, px), dm.data.labels["unseen_train"], extract_features(m, tx),
                         dm.data.labels["unseen_test"], shots=cfg["shots"], repeats=cfg["repeats"], seed=args.seed)
            rows += [{"dataset": name, "init": init, **row} for row in r]
        res["fewshot"] = rows
    return res


def _table(results: list[dict]) -> str:
    w = max(9, *(len(r["dataset"]) + 2 for r in results))
    lines = [f"{'dataset':<{w}}{'model':<18}{'test acc':>9}{'macro-F1':>10}{'train s':>9}"]
    for r in results:
        secs = {"baseline": r["seconds"]["baseline"], "heated": r["seconds"]["pretrain"],
                "heated+finetune": r["seconds"]["pretrain"] + r["seconds"]["finetune"]}
        for k, v in r["test"].items():
            lines.append(f"{r['dataset']:<{w}}{k:<18}{v['acc']:>9.3f}{v['macro_f1']:>10.3f}{secs[k]:>9.0f}")
    fs = [row for r in results for row in r.get("fewshot", [])]
    if fs:
        import pandas as pd

        df = pd.DataFrame(fs)
        piv = df.pivot_table(index="init", columns="n", values="macro_f1", aggfunc=["mean", "std"])
        ns = sorted(df.n.unique())
        lines += ["", "unseen-concept few-shot macro-F1 (linear probe on frozen features, mean ± std over draws)",
                  f"{'init':<18}" + "".join(f"{'n=' + str(n):>14}" for n in ns)]
        for init in df.init.unique():
            lines.append(f"{init:<18}" + "".join(
                f"{piv.loc[init, ('mean', n)]:>8.3f}±{piv.loc[init, ('std', n)]:<5.3f}" for n in ns))
    return "\n".join(lines)


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    acc = pd.DataFrame([{"dataset": r["dataset"], "model": k, "test accuracy": v["acc"]}
                        for r in results for k, v in r["test"].items()])
    fs = pd.DataFrame([row for r in results for row in r.get("fewshot", [])])
    ncols = 2 if len(fs) else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5.5 * ncols, 4), squeeze=False)
    sns.barplot(acc, x="dataset", y="test accuracy", hue="model", ax=axes[0, 0])
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].legend(loc="lower right", fontsize=8)
    axes[0, 0].set_title("held-in classes: test accuracy")
    if len(fs):
        sns.lineplot(fs, x="n", y="macro_f1", hue="init", marker="o", errorbar=("ci", 95), ax=axes[0, 1])
        axes[0, 1].set_xscale("log", base=2)
        axes[0, 1].set_title("unseen concepts: few-shot macro-F1")
        axes[0, 1].set_xlabel("labelled samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(args) -> int:
    import torch

    from pfkit.cli import UserError
    from pfkit.data.images import NpzFormatError, load_npz, resolve
    from pfkit.runs import RunDir

    _quiet()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(QUICK if args.quick else FULL)
    if args.epochs is not None:
        cfg["epochs"] = args.epochs
    if args.finetune_epochs is not None:
        cfg["finetune_epochs"] = args.finetune_epochs
    if cfg["epochs"] < 1 or cfg["finetune_epochs"] < 1:
        raise UserError("--epochs and --finetune-epochs must be >= 1")
    try:
        widths = [int(w) for w in args.widths.split(",")]
        assert len(widths) == 4 and min(widths) > 0
    except (ValueError, AssertionError):
        raise UserError(f"--widths {args.widths!r}: give four positive ints, e.g. 16,32,64,128") from None
    datasets = [("synthetic", resolve("synthetic"))]
    if args.data:
        try:
            load_npz(args.data)
        except (NpzFormatError, FileNotFoundError) as e:
            raise UserError(str(e)) from None
        datasets.append((Path(args.data).stem, args.data))
    out = Path(args.out or f"runs/demo_noisemask-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    run = RunDir(out)
    run.config_path.write_text(json.dumps({k: v for k, v in vars(args).items() if not k.startswith("_")}
                                          | {"settings": cfg}, indent=2, default=str) + "\n")
    t0 = time.time()
    results = [run_dataset(name, path, out, cfg, args) for name, path in datasets]
    wall = time.time() - t0
    table = _table(results)
    print("\n" + table)
    if any(r.get("fewshot") for r in results):
        import pandas as pd

        pd.DataFrame([row for r in results for row in r.get("fewshot", [])]).to_csv(out / "fewshot.csv", index=False)
    _plot(results, out / "summary.png")
    run.write_summary({"mode": args.mode, "quick": bool(args.quick), "wall_seconds": wall, "settings": cfg,
                       "results": results, "table": table})
    print(f"\nwall time {wall:.0f}s; wrote {out}/summary.json, summary.png, fewshot.csv and run folders "
          f"({', '.join(n for n, _ in datasets)}/{{baseline,pretrain,finetune}})")
    return 0
