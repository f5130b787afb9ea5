"""The wheel is a working kit (issue #19): built from this checkout, installed into a fresh venv, it runs
``pfkit demo pfppo --quick`` from a directory outside the checkout, with the embedded policy, reward model
and configs it carries as package data.

Cheap but clean: the new venv has no packages of its own except the wheel (``pip install --no-deps``); a
``.pth`` file puts the dev venv's site-packages *after* it on ``sys.path`` for the heavy dependencies
(torch, transformers, Lightning). ``.pth`` files in that folder are not processed from there, so the dev
venv's editable pfkit is not visible; the test checks that ``pfkit`` imports from the new venv.
(``python -m venv --system-site-packages`` would not do: it would see the editable install.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # --no-build-isolation: setuptools from this venv, no index needed
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, ROOT],
               timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    (whl,) = out.glob("pfkit-*.whl")
    return whl


def test_wheel_carries_the_assets_and_configs_once(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for need in ("pfkit/assets/policy/model.safetensors", "pfkit/assets/policy/tokenizer.json",
                 "pfkit/assets/reward/model.safetensors", "pfkit/assets/reward/pfkit.json",
                 "pfkit/assets/synthetic_medical.npz", "pfkit/configs/pfppo_codegen.yaml",
                 "pfkit/configs/demo/pfppo_quick.yaml", "pfkit/configs/gpu/pfppo_ddp.yaml",
                 "pfkit/sandbox/_worker.py", "pfkit/studies/noisemask.yaml", "pfkit/studies/vade.yaml"):
        assert need in names, need
    assert len(names) == len(set(names))
    with zipfile.ZipFile(wheel) as z:  # the links to studies/ became the files themselves
        assert z.read("pfkit/studies/noisemask.yaml") == (ROOT / "studies" / "noisemask.yaml").read_bytes()
    assert not [n for n in names if n.startswith(("data/", "configs/", "tests/"))]  # nothing outside pfkit/


def test_every_study_yaml_is_package_data_once():
    """studies/*.yaml are the files (their `table:` paths are relative to the checkout); pfkit/studies/ has
    one link to each, which the wheel turns into package data."""
    shipped = sorted(p.name for p in (ROOT / "studies").glob("*.yaml"))
    linked = sorted(p.name for p in (ROOT / "pfkit" / "studies").glob("*.yaml"))
    assert shipped and linked == shipped
    for name in linked:
        link = ROOT / "pfkit" / "studies" / name
        assert link.is_symlink() and link.resolve() == (ROOT / "studies" / name).resolve(), name


def test_a_shipped_study_by_name():
    from pfkit.cli import resolve_study
    from pfkit.study import load_study

    for arg in ("noisemask", "noisemask.yaml", "studies/noisemask.yaml"):
        path = Path(resolve_study(arg)) if arg != "studies/noisemask.yaml" else ROOT / arg
        assert path.resolve() == (ROOT / "studies" / "noisemask.yaml").resolve(), arg
    for missing in ("/nowhere/noisemask.yaml", "studies/nosuchstudy.yaml"):
        assert resolve_study(missing) == missing  # left for load_study's "not found" line
    study = load_study(resolve_study("noisemask"), quick=True)
    # its base config and table resolve against the checkout (the link's target), as a wheel's do against pfkit/
    assert "baseline" in [a.name for a in study.arms] and study.table == ROOT / "studies" / "results" / "noisemask.csv"


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_quick_demo_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    res = _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=300)
    assert res.returncode == 0, res.stderr
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_pfkit_dev_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel],
               timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]

    work = tmp_path / "elsewhere"  # not the checkout, no configs/ or data/ around
    work.mkdir()
    where = _run([py, "-c", "import pfkit, pfkit.models as m; print(pfkit.__file__); print(m.EMBEDDED)"], cwd=work)
    assert where.returncode == 0, where.stderr
    init, embedded = where.stdout.split()
    assert Path(init).resolve().is_relative_to(venv.resolve()), init  # the wheel's pfkit, not the checkout's
    assert Path(embedded).resolve().is_relative_to(venv.resolve()) and Path(embedded, "config.json").is_file()

    res = _run([venv / "bin" / "pfkit", "--version"], cwd=work)
    assert res.returncode == 0 and res.stdout.startswith("pfkit ")
    res = _run([venv / "bin" / "pfkit", "fit", "-c", "grpo_codegen", "--print_config"], cwd=work, timeout=600)
    assert res.returncode == 0 and "GRPOModule" in res.stdout, res.stderr[-3000:]  # a shipped config by name
    res = _run([venv / "bin" / "pfkit", "fit", "-c", "grpo_codegen", "--run_dir", "fit_run", "--trainer.max_steps", "1",
                "--model.init_args.prompts_per_step", "2", "--model.init_args.group_size", "2",
                "--model.init_args.max_new_tokens", "16", "--trainer.limit_val_batches", "0"], cwd=work, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]  # and it trains, from outside the checkout
    assert len(pd.read_csv(work / "fit_run" / "metrics.csv")) >= 1 and (work / "fit_run" / "config.yaml").is_file()
    res = _run([venv / "bin" / "pfkit", "demo", "pfppo", "--quick", "--strategies", "none,bw", "--out", "demo"],
               cwd=work, timeout=1500)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    summary = json.loads((work / "demo" / "summary.json").read_text())
    # the demo's arms by their study level names: PPO-M (strategy none), BW, and the SFT evaluation
    assert {r.get("strategy") for r in summary["pass_at_1"]} == {"sft", "ppo_m", "bw"}
    assert summary["reward_model"] and "Traceback" not in res.stderr
    # a quiet terminal: progress bars and pfkit's own lines; no library warning (they name their file)
    stray = [ln for ln in re.split(r"[\r\n]", res.stdout + res.stderr)
             if ("Warning" in ln or "site-packages" in ln or "warn(" in ln) and "site-packages/pfkit/" not in ln]
    assert not stray, stray[:10]
    # the VADE demo's default config (configs/grpo_codegen.yaml) resolves inside the installed package
    res = _run([venv / "bin" / "pfkit", "demo", "vade", "--quick", "--samplers", "uniform,vade", "--out", "vade",
                "--threads", "1"], cwd=work, timeout=1500)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert "smoke-test" in res.stdout + res.stderr and "Traceback" not in res.stderr
    assert {"uniform", "vade"} <= set(res.stdout.split())
    # the noise-mask demo reads studies/noisemask.yaml, package data now (two arms keep the test short)
    res = _run([venv / "bin" / "pfkit", "demo", "noisemask", "--quick", "--arms", "baseline,faithful", "--out", "nm",
                "--threads", "1"], cwd=work, timeout=1500)
    assert res.returncode == 0, (res.stdout[-2000:], res.stderr[-3000:])
    assert "a demonstration, not a result" in res.stdout and "Traceback" not in res.stderr
    assert sorted(pd.read_csv(work / "nm" / "results.csv")["arm"]) == ["baseline", "faithful"]
