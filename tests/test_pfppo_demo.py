"""`pfkit demo pfppo` as a subprocess: the quick (CI-sized) end-to-end run, and bad input."""

import subprocess
import sys


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "pfppo", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_bad_strategy_and_existing_out_are_clear_errors(tmp_path):
    res = run("--strategies", "none,best3")
    assert res.returncode == 2 and "unknown filtration strategy 'best3'" in res.stderr
    assert "Traceback" not in res.stderr
    (tmp_path / "x").write_text("keep me")
    res = run("--out", str(tmp_path))
    assert res.returncode == 2 and "already exists and is not empty" in res.stderr
    assert (tmp_path / "x").read_text() == "keep me"
