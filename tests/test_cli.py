"""The `pfkit` entry point, exercised as a real subprocess."""

import subprocess
import sys
from pathlib import Path

import pytest

VERBS = ["fit", "validate", "test", "demo", "evaluate", "analyze-filtration", "inspect", "study"]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_top_level_help_lists_every_verb():
    out = run("--help")
    assert out.returncode == 0, out.stderr
    for verb in VERBS:
        assert f"    {verb}" in out.stdout, f"{verb} missing from pfkit --help"


def test_fit_help_is_lightning_cli():
    out = run("fit", "--help")
    assert out.returncode == 0, out.stderr
    assert "--trainer.strategy" in out.stdout and "--model" in out.stdout and "--run_dir" in out.stdout


def test_each_verb_has_its_own_help():
    for verb in ["demo", "evaluate", "analyze-filtration", "inspect"]:
        out = run(verb, "--help")
        assert out.returncode == 0, (verb, out.stderr)
        assert "usage: pfkit" in out.stdout


def test_unknown_verb_is_a_clear_error():
    out = run("frobnicate")
    assert out.returncode == 2
    assert "invalid choice: 'frobnicate'" in out.stderr and "Traceback" not in out.stderr


def test_wrong_config_key_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("trainer:\n  max_epochz: 1\n")
    out = run("fit", "-c", str(cfg))
    assert out.returncode != 0
    assert "max_epochz" in out.stderr and "Traceback" not in out.stderr


def test_fit_writes_the_run_folder(tmp_path):
    """--run_dir puts the resolved config and checkpoints into the run folder (DESIGN.md contract)."""
    boring = "lightning.pytorch.demos.boring_classes"
    out = run("fit", "--model", f"{boring}.BoringModel", "--data", f"{boring}.BoringDataModule",
              "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
              "--run_dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert "max_steps: 2" in (tmp_path / "run" / "config.yaml").read_text()
    assert list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))


def test_renamed_config_keys_name_the_new_key(tmp_path):
    """One name per concept (docs/DEVELOPING.md): an old key fails with one line naming its new name."""
    cfg = tmp_path / "old.yaml"
    cfg.write_text("model:\n  class_path: pfkit.modules.pfppo.PFPPOModule\n  init_args:\n    n_samples: 5\n")
    out = run("fit", "-c", str(cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines() == [
        f"pfkit: error: `model: n_samples` was renamed to `group_size` (`model.init_args.group_size`); update {cfg}"]
    configs = Path(__file__).resolve().parents[1] / "configs"
    out = run("fit", "-c", str(configs / "pfppo_codegen.yaml"), "--data.init_args.prompts_per_step", "4")
    assert out.returncode == 2 and "moved to `model.init_args.prompts_per_step`" in out.stderr
    out = run("fit", "-c", str(configs / "reward_codegen.yaml"), "--data.n_samples=4")
    assert out.returncode == 2 and "`data: n_samples` was renamed to `group_size`" in out.stderr


@pytest.mark.parametrize("message", [
    # the texts Lightning 2.x prints (copied from a `pfkit demo pfppo` terminal), each must be silenced
    "Found 241 module(s) in eval mode at the start of training. This may lead to unexpected behavior during "
    "training. If this is intentional, you can ignore this warning.",
    "Experiment logs directory /tmp/x/runs/a/seed_0/ exists and is not empty. Previous log files in this "
    "directory will be deleted when the new ones are saved!",
    "You have overridden `transfer_batch_to_device` in `LightningModule` but have passed in a "
    "`LightningDataModule`. It will use the implementation from `LightningModule` instance.",
    "The 'train_dataloader' does not have many workers which may be a bottleneck.",
])
def test_quiet_silences_lightning_chatter_but_not_real_warnings(message):
    import warnings

    from pfkit.cli import quiet

    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("always")
        quiet()
        warnings.warn(message, UserWarning, stacklevel=1)
        warnings.warn("the reward model was trained on another policy", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["the reward model was trained on another policy"]
