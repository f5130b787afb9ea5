"""Noise-mask LightningModules: one training step per REINFORCE mode, fine-tune loading, `pfkit fit`, demo."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pfkit.data.images import ImageNpzDataModule, write_synthetic
from pfkit.modules.noisemask import NoiseMaskFinetune, NoiseMaskPretrain, PlainClassifier, load_classifier
from pfkit.runs import RunDir

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(widths=(4, 8, 8, 8), policy_widths=(4, 4, 4, 4), policy_hidden=8, grid=4)


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("syn") / "tiny.npz", size=16, seed=0, n_train=32, n_val=8,
                           n_test=8, n_unseen_train=8, n_unseen_test=8, n_shift_test=8)


def _trainer(tmp_path, steps=None, epochs=1):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    return Trainer(max_epochs=epochs, max_steps=-1 if steps is None else steps, logger=CSVLogger(str(tmp_path), name="",
                   version=""), enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                   num_sanity_val_steps=0, accelerator="cpu", devices=1)


@pytest.mark.parametrize("mode", ["faithful", "per_sample"])
def test_one_pretrain_step_changes_classifier_and_policy(tmp_path, tiny_npz, mode):
    torch.manual_seed(0)
    dm = ImageNpzDataModule(str(tiny_npz), batch_size=16)
    model = NoiseMaskPretrain(mode=mode, num_classes=6, in_channels=1, entropy_coef=0.01, **TINY)
    before_c = [p.detach().clone() for p in model.classifier.parameters()]
    before_p = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    base = model.policy.base_alpha.clone()
    _trainer(tmp_path, steps=2).fit(model, dm)  # manual optimisation: 2 optimiser steps = 1 batch
    assert any(not torch.equal(a, b) for a, b in zip(before_c, model.classifier.parameters()))
    changed = {n for n, p in model.policy.named_parameters() if not torch.equal(before_p[n], p)}
    assert any(n.startswith("alpha.") for n in changed) and any(n.startswith("fe.") for n in changed)
    assert not torch.equal(base, model.policy.base_alpha)
    if mode == "per_sample":
        assert model.baseline.value is not None


def test_pretrain_then_finetune_loads_the_heated_classifier(tmp_path, tiny_npz):
    torch.manual_seed(0)
    dm = ImageNpzDataModule(str(tiny_npz), batch_size=16)
    pre = NoiseMaskPretrain(**TINY)  # num_classes / in_channels come from the datamodule
    trainer = _trainer(tmp_path / "pre", epochs=1)
    trainer.fit(pre, dm)
    ckpt = tmp_path / "pre.ckpt"
    trainer.save_checkpoint(ckpt)
    run = RunDir(tmp_path / "pre")
    masks = run.load_masks(0)
    assert set(masks) >= {"image", "alpha", "beta", "mask", "masked", "label"}
    assert masks["image"].shape == masks["masked"].shape == (8, 16, 16) and masks["mask"].shape == (8, 4, 4)
    assert (masks["alpha"] > 0).all() and ((masks["mask"] > 0) & (masks["mask"] < 1)).all()
    assert "val/acc" in run.metrics().columns and "val/masked_acc" in run.metrics().columns

    ft = NoiseMaskFinetune(checkpoint=str(ckpt), num_classes=6, in_channels=1, widths=TINY["widths"])
    for a, b in zip(pre.classifier.state_dict().values(), ft.classifier.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit this classifier"):
        load_classifier(PlainClassifier(num_classes=6, in_channels=1).classifier, str(ckpt))
    other = PlainClassifier(num_classes=2, in_channels=1, widths=TINY["widths"]).classifier
    load_classifier(other, str(ckpt), load_head=False)  # new task: backbone only
    assert torch.equal(other.backbone.state_dict()["conv1.weight"], pre.classifier.backbone.state_dict()["conv1.weight"])


def _pfkit(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.mark.slow
def test_pfkit_fit_pretrain_then_finetune_configs(tmp_path, tiny_npz):
    common = ["--data.init_args.path", str(tiny_npz), "--data.init_args.batch_size", "16",
              "--trainer.max_epochs", "1", "--model.init_args.widths", "[4, 8, 8, 8]"]
    out = _pfkit("fit", "-c", str(ROOT / "configs/noisemask_pretrain.yaml"), "--run_dir", str(tmp_path / "pre"),
                 *common, "--model.init_args.grid", "4", "--model.init_args.mode", "per_sample", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    pre = RunDir(tmp_path / "pre").require("metrics", "masks", "config")
    assert {"train/acc", "val/acc"} <= set(pre.metrics().columns)
    assert (tmp_path / "pre/checkpoints/last.ckpt").is_file()
    # the other two configs in-process through the same entry point (a subprocess costs ~1 min of imports)
    from pfkit.cli import main

    assert main(["fit", "-c", str(ROOT / "configs/noisemask_finetune.yaml"), "--run_dir", str(tmp_path / "ft"),
                 *common, "--model.init_args.checkpoint", str(tmp_path / "pre/checkpoints/last.ckpt")]) == 0
    assert "val/acc" in RunDir(tmp_path / "ft").metrics().columns
    assert main(["fit", "-c", str(ROOT / "configs/noisemask_baseline.yaml"), "--run_dir", str(tmp_path / "base"),
                 *common]) == 0
    assert "train/acc" in RunDir(tmp_path / "base").metrics().columns


def test_demo_rejects_a_malformed_data_file(tmp_path, capsys):
    from pfkit.cli import main

    bad = tmp_path / "bad.npz"
    np.savez(bad, images=np.zeros((2, 28, 28), np.uint8))
    assert main(["demo", "noisemask", "--quick", "--data", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "missing key(s) train_images" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing started


@pytest.mark.slow
def test_demo_quick(tmp_path):
    """`pfkit demo noisemask` = one seed of studies/noisemask.yaml's arms through the study job."""
    out = _pfkit("demo", "noisemask", "--quick", "--threads", "1", "--arms", "baseline,faithful", "--out",
                 str(tmp_path / "demo"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = RunDir(tmp_path / "demo")
    summary = run.read_summary()
    rows = {r["arm"]: r for r in summary["results"]}
    assert set(rows) == {"baseline", "faithful"}
    for r in rows.values():
        assert all(0 <= r[k] <= 1 for k in ("test_acc", "test_f1", "test_auc", "shift_f1", "probe_f1_n16",
                                            "ft_f1_n64"))
        assert r["n_eval"] == 96  # the quick section's eval_subset
    assert "mask_entropy" in rows["faithful"] and "mask_entropy" not in rows["baseline"]
    assert (tmp_path / "demo/summary.png").stat().st_size > 1000
    assert RunDir(tmp_path / "demo/synthetic/faithful/seed_0/pretrain").mask_epochs()
    assert "demonstration, not a result" in out.stdout
    json.dumps(summary)
    bad = _pfkit("demo", "noisemask", "--quick", "--arms", "nope", "--out", str(tmp_path / "d2"), cwd=tmp_path)
    assert bad.returncode == 2 and "unknown arm(s) ['nope']" in bad.stderr and "Traceback" not in bad.stderr
