"""The run-folder contract: append-per-step tables, summary, masks, clear errors."""

import numpy as np
import pandas as pd
import pytest

from pfkit.runs import RunDir, RunFolderError


def test_append_then_read_keeps_every_step_in_order(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 0, 1):
        run.append("rollouts", [{"step": step, "reward": float(step)}, {"step": step, "reward": -1.0}], step=step)
    df = run.read("rollouts")
    assert list(df["step"]) == [0, 0, 1, 1, 2, 2]
    assert run.has_table("rollouts") and not run.has_table("difficulty")
    # a reader never sees temporary files of a writer in progress
    assert not list((tmp_path / "rollouts.parquet").glob(".*tmp"))


def test_reader_accepts_a_single_parquet_file(tmp_path):
    pd.DataFrame({"step": [0], "reward": [1.0]}).to_parquet(tmp_path / "rollouts.parquet")
    assert RunDir(tmp_path).read("rollouts")["reward"].tolist() == [1.0]


def test_missing_artifacts_name_what_is_missing(tmp_path):
    with pytest.raises(RunFolderError, match="not a folder"):
        RunDir(tmp_path / "nope").require("rollouts")
    with pytest.raises(RunFolderError, match="missing rollouts, masks"):
        RunDir(tmp_path).require("rollouts", "masks")
    with pytest.raises(RunFolderError, match="no difficulty.parquet"):
        RunDir(tmp_path).read("difficulty")


def test_summary_and_masks_round_trip(tmp_path):
    run = RunDir(tmp_path)
    run.write_summary({"pass@1": np.float32(0.5), "steps": np.int64(3)})
    assert run.read_summary() == {"pass@1": 0.5, "steps": 3}
    a = np.random.default_rng(0).random((2, 4, 4)).astype(np.float32)
    run.save_masks(3, alpha=a, label=np.array([0, 1]))
    assert run.mask_epochs() == [3]
    got = run.load_masks(3)
    np.testing.assert_array_equal(got["alpha"], a)
    with pytest.raises(RunFolderError, match="epochs present: \\[3\\]"):
        run.load_masks(4)


def test_metrics_merges_rows_of_one_step(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,epoch,train/loss,val/acc\n0,0,1.5,\n0,0,,0.25\n1,0,1.2,\n")
    m = RunDir(tmp_path).metrics()
    assert m.loc[m.step == 0, "train/loss"].item() == 1.5 and m.loc[m.step == 0, "val/acc"].item() == 0.25
