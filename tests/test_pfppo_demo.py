"""`pfkit demo pfppo` as a subprocess: the quick (CI-sized) end-to-end run, and bad input."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from pfkit.runs import RunDir


def run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "pfppo", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = run("--quick", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    methods = [r["method"] for r in summary["pass_at_1"]]
    assert methods == ["SFT (before RL)", "PPO-M (no filter)", "PF-PPO BR", "PF-PPO BW"]
    for r in summary["pass_at_1"]:
        assert 0.0 <= r["pass@1"] <= 1.0
    assert {r["strategy"] for r in summary["r2_sft"]} == {"none", "bon", "br", "bw"}
    r2 = {r["strategy"]: r["r2"] for r in summary["r2_sft"]}
    assert all(v != v or 0.0 <= v <= 1.0 for v in r2.values())  # NaN when no sample's score varies
    # the recommendation is by the binned R² (the paper's criterion), falling back to plain R² without bins
    binned = {r["strategy"]: r["r2_binned"] for r in summary["r2_sft"]}
    finite = {k: v for k, v in binned.items() if v == v} or {k: v for k, v in r2.items() if v == v}
    assert summary["recommended_strategy"] == (max(finite, key=finite.get) if finite else None)
    assert summary["peak_rss_mb"] < 4096
    kept = {}
    rows = {r.get("strategy"): r for r in summary["pass_at_1"]}
    for name, strategy, per_prompt in (("ppo", "none", 5), ("br", "br", 2), ("bw", "bw", 2)):
        rd = RunDir(out / name).require("rollouts", "metrics")
        df = rd.read("rollouts")
        assert df.groupby(["step", "prompt_id"]).kept.sum().eq(per_prompt).all(), name
        kept[name] = df
        assert "train/r2_kept" in rd.metrics().columns
        # the table's train pass rate is the run's mean of each step's unit-test pass fraction
        assert rows[strategy]["train_pass_rate_mean"] == pytest.approx(df.groupby("step").score.mean().mean())
    # same seed and prompts: the first iteration samples the same responses in every run
    a, b = (kept[n][kept[n].step == 0].sort_values(["prompt_id", "sample_idx"]) for n in ("ppo", "bw"))
    assert a.response.tolist() == b.response.tolist()
    assert "PF-PPO demo summary" in res.stdout
    # each run is configs/pfppo_codegen.yaml + configs/demo/pfppo{,_quick}.yaml; its config.yaml is that YAML
    import yaml

    for name, strategy in (("ppo", "none"), ("br", "br")):
        cfg = yaml.safe_load((out / name / "config.yaml").read_text())
        assert cfg["model"]["init_args"]["strategy"] == strategy
        assert cfg["trainer"]["limit_train_batches"] == 2 and cfg["model"]["init_args"]["prompts_per_step"] == 4
        assert cfg["data"]["init_args"]["offset"] == 2048 and cfg["data"]["init_args"]["n_train"] == 8
    # the SFT samples table feeds analyze-filtration
    ana = subprocess.run([sys.executable, "-m", "pfkit.cli", "analyze-filtration", str(out / "sft_samples")],
                         capture_output=True, text=True, timeout=300)
    assert ana.returncode == 0, ana.stderr
    assert "recommendation:" in ana.stdout and "R²" in ana.stdout
    assert isinstance(pd.read_parquet(out / "sft_samples" / "rollouts.parquet"), pd.DataFrame)


def test_bad_strategy_and_existing_out_are_clear_errors(tmp_path):
    res = run("--strategies", "none,best3")
    assert res.returncode == 2 and "unknown filtration strategy 'best3'" in res.stderr
    assert "Traceback" not in res.stderr
    res = run("--set", "model.init_args.kl_coef")
    assert res.returncode == 2 and "give KEY=VALUE" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "x").write_text("keep me")
    res = run("--out", str(tmp_path))
    assert res.returncode == 2 and "already exists and is not empty" in res.stderr
    assert (tmp_path / "x").read_text() == "keep me"
