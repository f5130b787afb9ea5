"""`pfkit study`: grid expansion, resumable runs in parallel processes, and intervals that match scipy/hand values."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from pfkit.cli import UserError
from pfkit.study import Arm, Study, load_study, mean_ci, run_study, summarize

T_975_2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom (statistical tables)
T_975_3 = 3.182446305284263

TOY_JOB = '''
import json, os
from pathlib import Path

def toy(run):
    """metric = level offset + seed/10; fails once for arms listed in FAIL_ONCE until a marker exists."""
    fail = run.args.get("fail_once_dir")
    if fail and run.arm in run.args.get("fail_arms", []):
        marker = Path(fail) / f"{run.arm}-{run.seed}"
        if not marker.exists():
            marker.write_text("x")
            raise RuntimeError(f"planned failure of {run.arm}")
    (run.run_dir / "trained.txt").write_text(str(os.getpid()))
    offset = float(run.args["offset"])
    lr = run.config["model"]["init_args"]["lr"]
    return {"score": offset + run.seed / 10, "lr_seen": lr, "n_eval": 10, "pid": os.getpid()}
'''


def write_study(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "toyjobs.py").write_text(TOY_JOB)
    (tmp_path / "configs").mkdir(exist_ok=True)
    (tmp_path / "configs" / "base.yaml").write_text("model:\n  init_args:\n    lr: 0.1\n    other: 1\n")
    (tmp_path / "studies").mkdir(exist_ok=True)
    path = tmp_path / "studies" / "toy.yaml"
    path.write_text(textwrap.dedent("""\
        name: toy
        prediction: arm b beats arm a by 1
        job: toyjobs:toy
        config: configs/base.yaml
        seeds: [0, 1, 2]
        baseline: a
        metrics: [score]
        table: studies/results/toy.csv
        arms:
          a: {args: {offset: 0.0}}
          b: {args: {offset: 1.0}, overrides: {model.init_args.lr: 0.5}}
        quick: {seeds: [0], arms: [a]}
        """) + extra)
    return path


def test_mean_ci_matches_hand_t_interval():
    n, mean, lo, hi = mean_ci([1.0, 2.0, 3.0])
    half = T_975_2 * 1.0 / math.sqrt(3)  # sd 1, sem 1/sqrt(3)
    assert (n, mean) == (3, 2.0)
    assert lo == pytest.approx(2 - half, abs=1e-9) and hi == pytest.approx(2 + half, abs=1e-9)
    assert math.isnan(mean_ci([5.0])[2])                    # one seed: no interval, never a fake one
    assert mean_ci([1.0, float("nan"), 3.0])[0] == 2          # NaN = not reached, not counted


def test_paired_differences_by_seed_on_a_hand_made_table():
    # arm b = arm a + (1, 2, 3, 2) on seeds 0..3: the paired diff is (1, 2, 3, 2), mean 2, sd sqrt(2/3)
    a = [10.0, 20.0, 30.0, 40.0]
    b = [11.0, 22.0, 33.0, 42.0]
    res = pd.DataFrame({"arm": ["a"] * 4 + ["b"] * 4, "seed": [0, 1, 2, 3] * 2, "m": a + b, "n_eval": 100})
    study = Study(name="t", job="x:y", seeds=[0, 1, 2, 3], baseline="a", metrics=["m"], arms=[Arm("a"), Arm("b")])
    per_arm, paired = summarize(res.sample(frac=1, random_state=0), study)  # order of rows must not matter
    row = paired.iloc[0]
    sd = math.sqrt(((1 - 2) ** 2 + 0 + (3 - 2) ** 2 + 0) / 3)
    half = T_975_3 * sd / 2
    assert (row.arm, row.baseline, row.pairs) == ("b", "a", 4)
    assert row.mean_diff == pytest.approx(2.0) and row.ci_low == pytest.approx(2 - half)
    assert row.ci_high == pytest.approx(2 + half)
    t = 2.0 / (sd / 2)  # paired t statistic, two-sided p from scipy's t distribution
    from scipy import stats
    assert row.p == pytest.approx(2 * stats.t.sf(t, 3))
    # unpaired, the per-arm intervals overlap widely: pairing is what resolves the difference
    b_row = per_arm[per_arm.arm == "b"].iloc[0]
    assert b_row["mean"] == pytest.approx(27.0) and b_row.ci_low < 20 and b_row.n_eval == 100


def test_factor_baseline_pairs_within_the_other_factors(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        job: toyjobs:toy
        baseline: {strategy: m}
        grid:
          strategy: {m: {}, br: {args: {k: 1}}}
          source: {rm: {args: {s: rm}}, oracle: {args: {s: or}}}
        """))
    study = load_study(path)
    names = [a.name for a in study.arms]
    assert names == ["strategy=m,source=rm", "strategy=m,source=oracle", "strategy=br,source=rm",
                     "strategy=br,source=oracle"]
    by = {a.name: a for a in study.arms}
    assert by["strategy=br,source=oracle"].args == {"k": 1, "s": "or"}
    assert study.baseline_of(by["strategy=br,source=oracle"]) == "strategy=m,source=oracle"
    assert study.baseline_of(by["strategy=m,source=rm"]) is None


def test_bad_study_files_are_one_clear_line(tmp_path):
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("seeds:", "sedes:"))
    with pytest.raises(UserError, match="unknown key `sedes`; did you mean `seeds`"):
        load_study(path)
    path = write_study(tmp_path)
    path.write_text(path.read_text().replace("baseline: a", "baseline: c"))
    with pytest.raises(UserError, match="baseline `c` is not an arm"):
        load_study(path)
    with pytest.raises(UserError, match="not found"):
        load_study(tmp_path / "missing.yaml")


def run_cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pfkit.cli", "study", *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.mark.slow
def test_cli_runs_in_parallel_processes_resumes_and_writes_the_table(tmp_path):
    path = write_study(tmp_path, f"args: {{fail_once_dir: {tmp_path}, fail_arms: [b]}}\n")
    out = tmp_path / "out"
    first = run_cli(tmp_path, "-c", str(path), "--out", str(out), "--workers", "2")
    assert first.returncode == 1, first.stdout + first.stderr  # the planned failures of arm b
    assert "3 run(s) failed" in first.stdout and "planned failure of b" in first.stdout
    assert "Traceback" in (out / "b" / "seed_0" / "error.txt").read_text()
    assert not (tmp_path / "studies" / "results" / "toy.csv").exists()  # incomplete grid: no committed table
    a_results = {s: (out / "a" / f"seed_{s}" / "result.json").stat().st_mtime for s in range(3)}

    second = run_cli(tmp_path, "-c", str(path), "--out", str(out), "--workers", "2")
    assert second.returncode == 0, second.stdout + second.stderr
    assert "3 finished earlier (skipped), 3 to run" in second.stdout
    assert {s: (out / "a" / f"seed_{s}" / "result.json").stat().st_mtime for s in range(3)} == a_results
    table = pd.read_csv(tmp_path / "studies" / "results" / "toy.csv")
    assert len(table) == 6 and set(table.arm) == {"a", "b"}
    assert table.set_index(["arm", "seed"]).loc[("b", 2), "score"] == pytest.approx(1.2)
    assert set(table[table.arm == "b"].lr_seen) == {0.5} and set(table[table.arm == "a"].lr_seen) == {0.1}
    assert table.pid.nunique() == 6  # every run in its own fresh process
    # the printed summary: the paired difference is exactly 1 on every seed, so its CI is [1, 1]
    paired_line = next(line for line in second.stdout.splitlines() if line.strip().startswith("b ") and "− a" in line)
    assert paired_line.split()[3:5] == ["1", "[1,"] and "pairs=3" in paired_line
    assert "same difference on all 3 seeds" in paired_line  # zero spread: not reported as a certain effect
    assert "evaluation samples per run: 10" in second.stdout and "seeds [0, 1, 2]" in second.stdout
    assert (out / "toy.png").stat().st_size > 1000
    cfg = (out / "b" / "seed_1" / "config.yaml").read_text()
    assert "lr: 0.5" in cfg and "seed_everything: 1" in cfg  # the run folder's config is YAML

    # --summary without runs reads the committed table and prints the same paired line
    stored = run_cli(tmp_path, "-c", str(path), "--summary", "--out", str(tmp_path / "nothing"))
    assert stored.returncode == 0 and "summarising the stored table" in stored.stdout
    assert paired_line in stored.stdout

    quick = run_cli(tmp_path, "-c", str(path), "--quick", "--out", str(tmp_path / "q"))
    assert quick.returncode == 0 and "QUICK: smoke-test sizes" in quick.stdout
    assert len(pd.read_parquet(tmp_path / "q" / "results.parquet")) == 1


@pytest.mark.parametrize("launcher", ["debug", "submitit-local"])
def test_submitit_launchers(tmp_path, launcher, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    study = load_study(write_study(tmp_path), quick=False)
    study.seeds = [0, 1]
    results, errors = run_study(study, tmp_path / "out", workers=2, launcher=launcher, log=lambda s: None)
    assert errors == [] and len(results) == 4
    assert sorted(results.score) == pytest.approx([0.0, 0.1, 1.0, 1.1])
    assert json.loads((tmp_path / "out" / "a" / "seed_1" / "result.json").read_text())["score"] == 0.1


def test_study_help_and_missing_file_via_cli(tmp_path):
    out = run_cli(tmp_path, "-c", "nope.yaml")
    assert out.returncode == 2 and "study file nope.yaml not found" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_arms_filter_runs_a_study_in_stages(tmp_path):
    """--arms runs only the matching arms; the committed table waits for the whole grid; a pattern that
    matches nothing is one clear error. Runs go seed-major, so a stopped study has every arm at seed 0."""
    import sys as _sys

    path = write_study(tmp_path)
    _sys.path.insert(0, str(tmp_path))
    try:
        study = load_study(path)
        assert [(r.arm, r.seed) for r in study.runs(tmp_path / "o")][:2] == [("a", 0), ("b", 0)]
        with pytest.raises(UserError, match="`c\\*` matches no arm of study toy; arms: a, b"):
            run_study(study, tmp_path / "o", workers=1, arms="c*")
        results, errors = run_study(study, tmp_path / "o", workers=1, arms="a", log=lambda m: None)
        assert not errors and set(results.arm) == {"a"} and len(results) == 3
        assert not (tmp_path / "studies" / "results" / "toy.csv").exists()
        results, errors = run_study(study, tmp_path / "o", workers=1, arms=["b"], log=lambda m: None)
        assert not errors and len(results) == 6
        assert list(results.arm) == ["a"] * 3 + ["b"] * 3  # the table is arm-major whatever the run order
        assert len(pd.read_csv(tmp_path / "studies" / "results" / "toy.csv")) == 6
    finally:
        _sys.path.remove(str(tmp_path))


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).resolve().parents[1] / "studies").glob("*.yaml")))
def test_every_shipped_study_loads_and_its_job_resolves(name):
    """A shipped study file that no longer parses, names a missing job or a quick arm that does not exist
    would only fail when someone runs it for an hour; load each (full and quick) and resolve its job."""
    from pfkit.study import resolve_job

    path = Path(__file__).resolve().parents[1] / "studies" / name
    full, quick = load_study(path), load_study(path, quick=True)
    assert full.arms and len(full.seeds) >= 3 and full.prediction, name
    assert quick.quick and {a.name for a in quick.arms} <= {a.name for a in full.arms}
    assert callable(resolve_job(full.job))
    if full.baseline is not None:
        assert all(full.baseline_of(a) is None or full.baseline_of(a) in {b.name for b in full.arms}
                   for a in full.arms)


def test_config_list_merges_in_order_and_arms_override_it(tmp_path):
    """`config: [a, b]` merges as repeated `pfkit fit -c`: mappings key by key, other values replaced;
    then the study's and the arm's dotted overrides apply on top."""
    (tmp_path / "a.yaml").write_text("trainer: {max_steps: 5, devices: 1}\nmodel: {init_args: {lr: 0.1, tags: [x, y]}}\n")
    (tmp_path / "b.yaml").write_text("trainer: {max_steps: 7}\nmodel: {init_args: {tags: [z]}}\n")
    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        job: pfkit.study:fit_job
        config: [a.yaml, b.yaml]
        overrides: {model.init_args.lr: 0.2}
        arms: {one: {overrides: {trainer.devices: 2}}, two: {}}
    """))
    study = load_study(tmp_path / "s.yaml")
    assert study.config == {"trainer": {"max_steps": 7, "devices": 1}, "model": {"init_args": {"lr": 0.1, "tags": ["z"]}}}
    one, two = study.arms
    assert study.config_for(one) == {"trainer": {"max_steps": 7, "devices": 2},
                                     "model": {"init_args": {"lr": 0.2, "tags": ["z"]}}}
    assert study.config_for(two)["trainer"]["devices"] == 1
    assert study.config["model"]["init_args"]["lr"] == 0.1  # config_for copies
    (tmp_path / "s.yaml").write_text("job: pfkit.study:fit_job\nconfig: [a.yaml, nope.yaml]\narms: {one: {}}\n")
    with pytest.raises(UserError, match="nope.yaml not found"):
        load_study(tmp_path / "s.yaml")


@pytest.mark.slow
def test_a_terminal_shows_a_bar_over_the_runs_and_a_pipe_does_not(tmp_path):
    """On a TTY the study draws a tqdm bar over its runs (per-run lines above it); captured output (tests,
    CI logs, notebooks) gets the lines only."""
    import fcntl
    import pty
    import struct
    import termios

    path = write_study(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen([sys.executable, "-m", "pfkit.cli", "study", "-c", str(path), "--out",
                             str(tmp_path / "tty"), "--workers", "2"], stdout=slave, stderr=slave, cwd=tmp_path,
                            env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "study toy: [6/6]" in shown and "6/6 [" in shown and ("run/s" in shown or "s/run" in shown), shown[-2000:]
    piped = run_cli(tmp_path, "-c", str(path), "--out", str(tmp_path / "pipe"), "--workers", "2")
    assert piped.returncode == 0 and "s/run" not in piped.stderr + piped.stdout and "run/s" not in piped.stderr


def test_a_study_job_runs_without_the_modules_own_run_lines(tmp_path, capsys, monkeypatch):
    """Inside a study job the RunSummary callback is silent (the study prints one line per run, and a worker's
    print would break the study's bar); outside it, it prints pfkit's own start and end lines."""
    from types import SimpleNamespace

    import torch

    from pfkit.callbacks import RunSummary
    from pfkit.study import execute

    (tmp_path / "flagjob.py").write_text("from pfkit.callbacks import RunSummary\n\n"
                                         "def job(run):\n    return {'silenced': int(RunSummary.silenced), 'n_eval': 1}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    row = execute({"arm": "a", "seed": 0, "run_dir": str(tmp_path / "r")}, "flagjob:job")
    assert row["silenced"] == 1 and RunSummary.silenced is False  # restored after the job

    trainer = SimpleNamespace(is_global_zero=True, max_steps=3, max_epochs=1, ckpt_path=None, global_step=3)
    summary, module = RunSummary(), torch.nn.Linear(1000, 1000)
    summary.run = SimpleNamespace(path=tmp_path / "r")
    monkeypatch.setattr(RunSummary, "silenced", True)
    summary.on_train_start(trainer, module)
    summary.on_fit_end(trainer, module)
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(RunSummary, "silenced", False)
    summary.on_train_start(trainer, module)
    summary.on_fit_end(trainer, module)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("[pfkit] Linear: 1.00 M trainable of 1.00 M parameters, up to 3 steps -> ")
    assert out[1].startswith("[pfkit] Linear: 3 steps in ") and "config.yaml" in out[1]  # execute wrote it
