"""`pfkit demo pfppo` as a subprocess: the quick (CI-sized) end-to-end run, and bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from pfkit.runs import RunDir


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "pfppo", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    """The quick demo is a 2-seed paired study: its printed and stored intervals are scipy's over the runs'
    own results, seeds differ in what they sample, arms of one seed sample the same first responses."""
    from scipy import stats

    out = tmp_path / "demo"
    res = run("--quick", "--strategies", "none,bw", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["arm"] for r in summary["pass_at_1"]] == ["sft", "ppo_m-noisy_middle", "bw-noisy_middle"]
    assert summary["settings"]["seeds"] == [0, 1] and summary["settings"]["sources"] == ["noisy_middle"]
    results = pd.read_parquet(out / "runs" / "results.parquet")
    assert len(results) == 6 and set(results.seed) == {0, 1}
    by = results.set_index(["arm", "seed"])["pass1_greedy"]
    rows = {r["arm"]: r for r in summary["pass_at_1"]}
    for arm, r in rows.items():
        assert 0.0 <= r["pass@1"] <= 1.0
        assert r["pass@1"] == pytest.approx(by[arm].mean())
    # the paired difference and its interval, recomputed from the runs' results
    diff = (by["bw-noisy_middle"] - by["ppo_m-noisy_middle"]).to_numpy()
    bw = rows["bw-noisy_middle"]
    assert bw["delta_vs_ppo_m"] == pytest.approx(diff.mean())
    if diff.std() > 0:
        lo, hi = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
        assert (bw["delta_ci_low"], bw["delta_ci_high"]) == pytest.approx((lo, hi))
    assert "PF-PPO demo summary  (QUICK: smoke-test sizes, not a result)" in res.stdout
    assert "Δ vs PPO-M [95% CI]" in res.stdout and "2 paired seeds" in res.stdout
    assert {r["strategy"] for r in summary["r2_sft"]} == {"none", "bon", "br", "bw"}
    r2 = {r["strategy"]: r["r2"] for r in summary["r2_sft"]}
    assert all(v != v or 0.0 <= v <= 1.0 for v in r2.values())  # NaN when no sample's score varies
    # the recommendation is by the binned R² (the paper's criterion), falling back to plain R² without bins
    binned = {r["strategy"]: r["r2_binned"] for r in summary["r2_sft"]}
    finite = {k: v for k, v in binned.items() if v == v} or {k: v for k, v in r2.items() if v == v}
    assert summary["recommended_strategy"] == (max(finite, key=finite.get) if finite else None)
    assert summary["peak_rss_mb"] < 4096
    first = {}
    for arm, per_prompt in (("ppo_m-noisy_middle", 5), ("bw-noisy_middle", 2)):
        for seed in (0, 1):
            rd = RunDir(out / "runs" / arm / f"seed_{seed}").require("rollouts", "metrics")
            df = rd.read("rollouts")
            assert df.groupby(["step", "prompt_id"]).kept.sum().eq(per_prompt).all(), arm
            assert "train/r2_kept" in rd.metrics().columns
            first[arm, seed] = df[df.step == 0].sort_values(["prompt_id", "sample_idx"]).response.tolist()
            # each run is configs/pfppo_codegen.yaml + configs/demo/pfppo{,_quick}.yaml + the arm; seed = run seed
            cfg = yaml.safe_load((out / "runs" / arm / f"seed_{seed}" / "study_config.yaml").read_text())
            init = cfg["model"]["init_args"]
            assert init["strategy"] == ("none" if arm.startswith("ppo_m") else "bw") and init["seed"] == seed
            assert init["reward_source"] == "oracle" and init["oracle_profile"] == "noisy_middle"
            assert cfg["trainer"]["limit_train_batches"] == 2 and init["prompts_per_step"] == 4
            assert cfg["data"]["init_args"]["offset"] == 2048 and cfg["data"]["init_args"]["n_train"] == 8
    # paired: the same seed samples the same first responses in every arm; another seed samples others
    assert first["ppo_m-noisy_middle", 0] == first["bw-noisy_middle", 0]
    assert first["ppo_m-noisy_middle", 0] != first["ppo_m-noisy_middle", 1]
    # the SFT samples table feeds analyze-filtration
    ana = subprocess.run([sys.executable, "-m", "pfkit.cli", "analyze-filtration", str(out / "sft_samples")],
                         capture_output=True, text=True, timeout=300)
    assert ana.returncode == 0, ana.stderr
    assert "recommendation:" in ana.stdout and "R²" in ana.stdout


def test_bad_strategy_and_existing_out_are_clear_errors(tmp_path):
    res = run("--strategies", "none,best3")
    assert res.returncode == 2 and "unknown filtration strategy 'best3'" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("--sources", "noisy_middle,rm")
    assert res.returncode == 2 and "--sources: unknown ['rm']" in res.stderr and "Traceback" not in res.stderr
    res = run("--seeds", "1")
    assert res.returncode == 2 and "at least 2 paired seeds" in res.stderr
    res = run("--set", "model.init_args.kl_coef")
    assert res.returncode == 2 and "give KEY=VALUE" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "x").write_text("keep me")
    res = run("--out", str(tmp_path))
    assert res.returncode == 2 and "already exists and is not empty" in res.stderr
    assert (tmp_path / "x").read_text() == "keep me"
