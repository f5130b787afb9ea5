"""`pfkit analyze-filtration` as a real subprocess, on hand-made logged samples."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from pfkit.rl.filtration import recommend, select, strategy_table
from pfkit.runs import RunDir


def run(*args):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "analyze-filtration", *args],
                          capture_output=True, text=True, timeout=120)


def make_samples(P=60, N=5, seed=0):
    """RM reliable at the extremes only: BW/BR beat BoN; two steps, the second must be ignored."""
    rng = np.random.default_rng(seed)
    rows = []
    for step in (0, 1):
        for p in range(P):
            score = (rng.random(N) < rng.random()).astype(float)
            reward = np.where(score > 0, 0.8, -0.8) + rng.normal(0, 0.8, N)
            if step == 1:
                reward = rng.normal(size=N)  # garbage at a later step
            for i in range(N):
                rows.append(dict(step=step, prompt_id=f"p{p}", sample_idx=i, prompt="x", response="y",
                                 reward=reward[i], score=score[i], kept=True, advantage=0.0))
    return pd.DataFrame(rows)


def test_strategy_table_matches_direct_computation():
    df = make_samples()
    first = df[df.step == 0].reset_index(drop=True)
    table = strategy_table(first.copy(), bins=None).set_index("strategy")
    R = torch.tensor(first["reward"].to_numpy()).view(-1, 5)
    S = first["score"].to_numpy().reshape(-1, 5)
    for s in ("none", "bon", "bw"):
        m = select(R, s).numpy()
        expected = stats.linregress(R.numpy()[m], S[m]).rvalue ** 2
        assert table.loc[s, "r2"] == pytest.approx(expected, rel=1e-9)
    assert table.loc["br", "kept_per_prompt"] == pytest.approx(2.0)
    assert table.loc["bon", "kept_per_prompt"] == pytest.approx(1.0)
    assert recommend(table.reset_index()) == table["r2"].idxmax()  # no bins: falls back to the plain R²
    binned = strategy_table(first.copy(), bins=6).set_index("strategy")
    assert recommend(binned.reset_index()) == binned["r2_binned"].idxmax()
    assert recommend(binned.reset_index(), by="r2") == binned["r2"].idxmax()


def test_cli_on_run_folder(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    df = make_samples()
    for step, part in df.groupby("step"):
        run_dir.append("rollouts", part, step=int(step))
    out = run(str(run_dir.path))
    assert out.returncode == 0, out.stderr
    for label in ("none (PPO-M)", "BoN", "BR", "BW", "recommendation:"):
        assert label in out.stdout
    assert "step 0" in out.stdout and "300 samples" in out.stdout
    assert (run_dir.path / "filtration_r2.png").stat().st_size > 10_000
    best = out.stdout.split("recommendation: ")[1].split()[0]
    table = strategy_table(df[df.step == 0].reset_index(drop=True), bins=10)
    assert best == recommend(table) == table.set_index("strategy")["r2_binned"].idxmax()  # the binned criterion
    assert "highest binned R²" in out.stdout
    # the reliability curve is printed with per-bin counts that add up to every sample of the step
    curve_lines = out.stdout.split("reliability (all 300 samples)")[1].splitlines()[2:12]
    assert sum(int(line.split()[3]) for line in curve_lines) == 300


def test_cli_on_parquet_file_with_all_steps(tmp_path):
    f = tmp_path / "samples.parquet"
    make_samples().to_parquet(f)
    out = run(str(f), "--steps", "all", "--strategies", "none,bw", "--plot", str(tmp_path / "p.png"))
    assert out.returncode == 0, out.stderr
    assert "600 samples" in out.stdout and "\nBoN " not in out.stdout and "\nBW " in out.stdout
    assert (tmp_path / "p.png").is_file()


@pytest.mark.parametrize("make_bad, message", [
    (lambda t: t / "nope", "does not exist"),
    (lambda t: t, "no rollouts.parquet"),
    (lambda t: (pd.DataFrame({"prompt_id": [1], "reward": [0.1]}).to_parquet(t / "x.parquet"), t / "x.parquet")[1],
     "lacks column(s) score"),
])
def test_bad_paths_are_one_line_errors(tmp_path, make_bad, message):
    out = run(str(make_bad(tmp_path)))
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_strategy_is_a_clear_error(tmp_path):
    f = tmp_path / "s.parquet"
    make_samples(P=3).to_parquet(f)
    out = run(str(f), "--strategies", "none,top3")
    assert out.returncode == 2 and "unknown filtration strategy 'top3'" in out.stderr
