"""Every user error of every verb is one line (issue #19): exit code 2, one line on stderr that says what was
wrong and how to fix it, no traceback; ``PFKIT_DEBUG=1`` shows the traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env_for

ROOT = Path(__file__).resolve().parents[1]
PFPPO = str(ROOT / "configs" / "pfppo_codegen.yaml")
BORING = "lightning.pytorch.demos.boring_classes"
FIT_BORING = ["fit", "--model", f"{BORING}.BoringModel", "--data", f"{BORING}.BoringDataModule",
              "--trainer.enable_progress_bar", "false"]


def _files(tmp: Path) -> None:
    """The wrong inputs each case points at (all inside tmp)."""
    import torch

    (tmp / "text.ckpt").write_text("this is not a checkpoint\n")
    (tmp / "garbage.ckpt").write_bytes(bytes(range(256)) * 8)
    torch.save({"state_dict": {"x": torch.zeros(2)}}, tmp / "plain_torch.ckpt")  # a zip, not Lightning's
    (tmp / "typo.yaml").write_text("trainer:\n  max_epochz: 1\n")
    (tmp / "samples.jsonl").write_text('{"task_id": "x", "completion": "y"}\n')
    (tmp / "not_a_run").mkdir()


# (id, argv, the hint the line must contain); paths are relative to tmp_path, the subprocess' cwd
CASES = [
    ("policy-path", ["fit", "-c", PFPPO, "--model.init_args.policy", "/nonexistent/policy"],
     "policy path '/nonexistent/policy' does not exist"),
    ("reward-path", ["fit", "-c", PFPPO, "--model.init_args.reward_model", "/nonexistent/rm"],
     "/nonexistent/rm is not a saved reward model"),
    ("ckpt-missing", [*FIT_BORING, "--ckpt_path", "missing.ckpt"], "--ckpt_path missing.ckpt does not exist"),
    ("ckpt-text", [*FIT_BORING, "--ckpt_path", "text.ckpt"], "text.ckpt is not a PyTorch checkpoint"),
    ("ckpt-garbage", [*FIT_BORING, "--ckpt_path", "garbage.ckpt"], "garbage.ckpt is not a PyTorch checkpoint"),
    ("ckpt-not-lightning", [*FIT_BORING, "--ckpt_path", "plain_torch.ckpt"], "not a Lightning checkpoint"),
    ("ckpt-folder", [*FIT_BORING, "--ckpt_path", "not_a_run"], "is a folder, not a checkpoint file"),
    ("key-cli", ["fit", "-c", PFPPO, "--trainer.max_stepz", "3"], "did you mean `trainer.max_steps`?"),
    ("key-yaml", ["fit", "-c", "typo.yaml"], "unknown key `trainer.max_epochz`; did you mean `trainer.max_epochs`?"),
    ("key-init-arg", ["fit", "-c", PFPPO, "--model.init_args.strategi", "bw"],
     "did you mean `model.init_args.strategy`?"),
    ("model-class", ["fit", "--model", "PFPPOModul"], "did you mean `PFPPOModule`?"),
    ("config-missing", ["fit", "-c", "nonexistent.yaml"], "nonexistent.yaml not found"),
    ("inspect-folder", ["inspect", "filtration", "not_a_run"], "not_a_run is missing rollouts"),
    ("inspect-absent", ["inspect", "difficulty", "no_such_dir"], "no_such_dir"),
    ("demo-data", ["demo", "noisemask", "--quick", "--data", "samples.jsonl"], "samples.jsonl is not an .npz archive"),
    ("evaluate-samples", ["evaluate", "humaneval", "--samples", "missing.jsonl"], "samples file not found"),
    ("analyze-folder", ["analyze-filtration", "not_a_run"], "has no rollouts.parquet"),
    # a shipped study by name from outside the checkout: found (its arms are listed), the arm is the mistake
    ("study-arm", ["study", "-c", "noisemask", "--quick", "--arms", "nope"], "arms: baseline, random_mask"),
    ("study-missing", ["study", "-c", "nosuchstudy"], "nosuchstudy not found"),
]


def _pfkit(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=child_env_for(**(env or {})))


@pytest.mark.slow
@pytest.mark.parametrize("argv,hint", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_user_error_is_one_line(tmp_path, argv, hint):
    _files(tmp_path)
    out = _pfkit(argv, tmp_path, timeout=240)  # an inspector that served instead of exiting times out here
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("pfkit: error: ") and hint in lines[0], lines[0]
    assert "weights_only=False" not in out.stderr and "allow_pickle" not in out.stderr


@pytest.mark.slow
def test_pfkit_debug_shows_the_traceback(tmp_path):
    _files(tmp_path)
    out = _pfkit([*FIT_BORING, "--ckpt_path", "text.ckpt"], tmp_path, env={"PFKIT_DEBUG": "1"})
    assert out.returncode == 2
    assert "Traceback" in out.stderr and "check_checkpoint" in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("pfkit: error: --ckpt_path text.ckpt")


def test_version():
    from pfkit import __version__

    out = _pfkit(["--version"], ROOT)
    assert out.returncode == 0 and out.stdout.strip() == f"pfkit {__version__}"


def test_closest_key():
    """The suggestion is the nearest sibling key (same section) first, else the nearest anywhere."""
    from pfkit.cli import _closest

    keys = ["trainer.max_steps", "trainer.max_epochs", "trainer.min_steps", "model", "ckpt_path"]
    assert _closest("trainer.max_stepz", keys) == "trainer.max_steps"
    assert _closest("trainer.max_epochz", keys) == "trainer.max_epochs"
    assert _closest("ckpt_pth", keys) == "ckpt_path"
    assert _closest("trainer.zzzzzz", keys) is None
