"""The `pfkit` entry point, exercised as a real subprocess."""

import subprocess
import sys

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
