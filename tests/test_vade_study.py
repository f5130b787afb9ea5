"""The VADE efficiency benchmark and study job: "not reached" is reported as such, never 0 or 1; no
tie at ratio(0, 0); every sampler stops at the budget; the study job's metrics and run folder."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from pfkit.demos import vade as demo

ROOT = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("vade_efficiency", ROOT / "benchmarks" / "vade_efficiency.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_not_reached_is_nan_and_zero_over_zero_is_no_signal():
    b = bench()
    curve = [(0, 0.1), (128, 0.2), (256, 0.3)]
    assert b.rollouts_to_reach(curve, 0.2) == 128.0
    assert math.isnan(b.rollouts_to_reach(curve, 0.31))
    assert math.isnan(b.ratio(0.0, 0.0)) and math.isnan(b.ratio(math.nan, 128.0))
    assert math.isnan(b.ratio(128.0, math.nan)) and b.ratio(64.0, 128.0) == 0.5
    assert demo.rollouts_to_reach(curve, 0.2) == 128.0 and math.isnan(demo.rollouts_to_reach(curve, 0.5))
    assert math.isnan(demo.target_ratio(0.0, 0.0, 0.0))          # baseline gained nothing: no signal
    assert math.isnan(demo.target_ratio(0.0, 256.0, -0.01))
    assert math.isnan(demo.target_ratio(math.nan, 256.0, 0.05))  # not reached
    assert demo.target_ratio(128.0, 256.0, 0.05) == 0.5


def test_benchmark_summary_prints_not_reached(capsys):
    b = bench()
    names = ["uniform", "dapo_filter", "vade"]
    curves = {s: {"uniform": [(0, 0.1), (100, 0.2), (200, 0.3)],
                  "dapo_filter": [(0, 0.1), (150, 0.15), (200, 0.16)],       # never reaches +0.1
                  "vade": [(0, 0.1), (50, 0.2 + s * 0.01), (200, 0.4)]} for s in range(3)}
    out = b.summarise_targets(curves, [0.1], names)["+0.10"]
    assert [r["rollouts_dapo_filter"] for r in out["per_seed"]] != [0.0] * 3
    assert all(math.isnan(r["rollouts_dapo_filter"]) for r in out["per_seed"])
    assert out["ratio_vs_uniform"]["dapo_filter"]["n"] == 0
    assert out["ratio_vs_uniform"]["vade"]["mean"] == pytest.approx(0.5)
    assert out["ratio_vs_dapo_filter"]["vade"]["n"] == 0            # vade / not-reached is not a ratio
    b.print_targets("t", {"+0.10": out}, names, 3)
    text = capsys.readouterr().out
    assert "not reached (0/3 seeds)" in text and "< dapo_filter NOT met" in text
    assert "0.500" in text and "<= 0.7x uniform met" in text


def test_geo_mean_ci_uses_scipy_t_interval():
    from scipy import stats

    b = bench()
    vals = [0.5, 0.8, 0.6, math.nan]
    c = b.geo_mean_ci(vals)
    logs = [math.log(v) for v in vals[:3]]
    m = sum(logs) / 3
    lo, hi = stats.t.interval(0.95, 2, loc=m, scale=stats.sem(logs))
    assert c["n"] == 3 and c["mean"] == pytest.approx(math.exp(m))
    assert (c["low"], c["high"]) == pytest.approx((math.exp(lo), math.exp(hi)))


@pytest.mark.parametrize("name", ["uniform", "dapo_filter", "greso", "vade"])
def test_bandit_runs_stop_at_the_same_budget(name):
    b = bench()
    curve = b.bandit_run(name, 0, num_prompts=32, k=4, budget=4 * 8 * 5, theta_mean=-3.0)
    assert curve[-1][0] == 4 * 8 * 5   # dapo_filter's refill rounds are cut at the budget too


def test_standard_error_is_the_binomial_se_given_the_prompts():
    p = torch.tensor([0.0, 0.5, 1.0, 0.25], dtype=torch.float64)
    se = demo.standard_error(p, 4)
    assert se == pytest.approx(math.sqrt((0.25 + 0.1875) / 3) / 4)
    assert math.isnan(demo.standard_error(p, 1))


@pytest.fixture(scope="module")
def tiny_code_policy(tmp_path_factory):
    from pfkit.models import build_policy, train_tokenizer
    from pfkit.tasks import codegen

    out = tmp_path_factory.mktemp("vade_job") / "pol"
    probs = codegen.generate(20, seed=1)
    tok = train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=400)
    torch.manual_seed(0)
    build_policy(tok, n_layer=1, n_embd=32, n_head=2, n_positions=512).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def tiny_run(study: Path, arm: str, sampler: str, policy: Path, **args):
    cfg = demo.load_config()
    for k, v in {"model.init_args.policy": str(policy), "model.init_args.sampler": sampler,
                 "model.init_args.prompts_per_step": 2, "model.init_args.group_size": 2,
                 "model.init_args.max_new_tokens": 8, "data.init_args.n_train": 6,
                 "data.init_args.n_val": 4}.items():
        demo.set_dotted(cfg, k, v)
    a = {"budget": 12, "eval_every": 4, "curve_samples": 1, "eval_samples": 2, "log_difficulty": "all", **args}
    return demo.Run(arm=arm, seed=0, run_dir=study / arm / "seed_0", config=cfg, args=a)


@pytest.mark.slow
def test_study_job_runs_to_budget_and_reports_not_reached(tiny_code_policy, tmp_path, one_torch_thread):
    study = tmp_path / "study"
    u = demo.run_arm(tiny_run(study, "uniform", "uniform", tiny_code_policy))
    d = demo.run_arm(tiny_run(study, "dapo_filter", "dapo_filter", tiny_code_policy))
    for r in (u, d):
        assert r["rollouts_spent"] == 12 and r["n_eval"] == 4 * 2 and r["eval_samples"] == 2
        assert 0.0 <= r["val_pass_final"] <= 1.0 and 0.0 <= r["eff_ratio_mean"] <= 1.0
    curve = (study / "uniform" / "seed_0" / "curve.csv").read_text().splitlines()
    assert curve[0] == "step,rollouts,val_pass,arm,seed" and curve[-1].split(",")[1] == "12"
    assert [int(line.split(",")[1]) for line in curve[1:]] == [0, 4, 8, 12]
    assert (study / "uniform" / "seed_0" / "difficulty.parquet").exists()
    assert (study / "_initial_eval" / "seed_0.json").is_file()        # measured once, shared
    assert d["val_pass_initial"] == u["val_pass_initial"]
    assert d["target"] == json.loads((study / "uniform" / "seed_0" / "final.json").read_text())["curve_final"]
    # a baseline whose final pass rate this run cannot reach: "not reached" is NaN, never 0 or 1
    base = study / "strong" / "seed_0"
    base.mkdir(parents=True)
    base.joinpath("final.json").write_text(json.dumps({"val_pass_final": 0.9, "val_pass_initial": 0.0,
                                                       "curve_final": 0.9, "curve_initial": 0.0,
                                                       "curve": [[0, 0.0], [12, 0.9]]}))
    r = demo.run_arm(tiny_run(study, "vade", "vade", tiny_code_policy, target_arm="strong"))
    assert math.isnan(r["rollouts_to_target"]) and r["reached_target"] == 0.0
    assert math.isnan(r["rollouts_to_target_ratio"]) and r["target"] == 0.9
    # no baseline run in the folder: the target metrics are NaN, the rest is measured
    r = demo.run_arm(tiny_run(tmp_path / "alone", "vade", "vade", tiny_code_policy, target_arm="uniform"))
    assert math.isnan(r["target"]) and math.isnan(r["rollouts_to_target_ratio"]) and r["rollouts_spent"] == 12


@pytest.mark.slow
def test_demo_cli_quick_runs_the_study_job_per_sampler(tiny_code_policy, tmp_path, child_env):
    """`pfkit demo vade --quick` as a subprocess: one run folder per sampler through run_arm, the table,
    summary.json and the figure."""
    import subprocess
    import sys

    out = tmp_path / "demo"
    env = child_env()
    res = subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "vade", "--quick", "--samplers",
                          "uniform,dapo_filter", "--policy", str(tiny_code_policy), "--budget", "32",
                          "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for name in ("uniform", "dapo_filter"):
        assert summary[name]["rollouts_spent"] == 32 and summary[name]["n_eval"] == 8 * 2
        assert (out / name / "seed_0" / "curve.csv").is_file() and (out / name / "seed_0" / "metrics.csv").is_file()
    assert (out / "reward_vs_rollouts.png").stat().st_size > 0
    assert "sampler      rollouts" in res.stdout and "n_eval = 16" in res.stdout
    bad = subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "vade", "--budget", "30", "--out",
                          str(tmp_path / "bad")], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "multiple of group_size=8" in bad.stderr and "Traceback" not in bad.stderr
