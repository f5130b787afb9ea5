"""`pfkit demo vade --task visual`: GRPO's prompt files for the embedded visual task (new images, disjoint
from the shipped VLM's SFT data), the job's held-out evaluation through the VLM path, and the demo CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pfkit.demos import vade as demo
from pfkit.runs import RunDir
from pfkit.tasks import visual


def test_visual_prompt_files_are_new_images_written_once(tmp_path):
    from pfkit.data.prompts import PromptDataModule

    train, held = demo.visual_prompt_files(tmp_path, 6, 4, size=48)
    mtime = train.stat().st_mtime_ns
    assert demo.visual_prompt_files(tmp_path, 6, 4, size=48) == (train, held) and train.stat().st_mtime_ns == mtime
    dm = PromptDataModule(task="file", prompts_file=str(train), val_file=str(held), verifier="exact",
                          template="{prompt} Answer:", n_train=6, n_val=4)
    dm.setup()
    assert len(dm.train_set) == 6 and len(dm.val_set) == 4
    assert dm.val_set.prompts[0].endswith(" Answer:") and not set(dm.train_set.ids) & set(dm.val_set.ids)
    from PIL import Image

    got = [np.asarray(Image.open(p).convert("RGB")) for p in dm.val_set.images]
    want = visual.generate(4, seed=demo.VISUAL_HELDOUT_STREAM, size=48)
    assert all(np.array_equal(a, b.image) for a, b in zip(got, want))
    # none of GRPO's images is one the VLM was trained, tuned or tested on (streams 1-3 of the same generator)
    sft = {p.image.tobytes() for k in (1, 2, 3) for p in visual.generate(6, seed=k, size=48)}
    mine = {np.asarray(Image.open(p).convert("RGB")).tobytes() for p in dm.train_set.images + dm.val_set.images}
    assert not mine & sft
    assert dm.val_set.score([0, 0], [f" {want[0].answer}", " nothing"]) == [1.0, 0.0]


@pytest.mark.slow
def test_pass_rates_of_a_vlm_match_grpo_validation(tmp_path):
    """The demo's held-out evaluation of a VLM = GRPOModule.evaluate with the same generator seed: the same
    images, prompts, draws and verifier, per prompt averaged the same way."""
    import torch

    from pfkit.data.prompts import PromptDataModule
    from pfkit.modules.grpo import GRPOModule

    torch.manual_seed(0)
    train, held = demo.visual_prompt_files(tmp_path, 4, 6)
    dm = PromptDataModule(task="file", prompts_file=str(train), val_file=str(held), verifier="exact",
                          template="{prompt} Answer:", n_train=4, n_val=6)
    dm.setup()
    m = GRPOModule(policy="embedded_vlm", sampler="uniform", prompts_per_step=2, group_size=2, max_new_tokens=2,
                   seed=3).attach(dm.train_set, dm.val_set)
    per = demo.pass_rates(m, dm.val_set, 4, seed=3 + 777)
    assert per.shape == (6,) and set((per * 4).round().tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    assert float(per.mean()) == pytest.approx(m.evaluate(temperature=1.0, samples=4))
    assert torch.equal(per, demo.pass_rates(m, dm.val_set, 4, seed=3 + 777))   # a function of the seed


@pytest.mark.slow
def test_demo_vade_task_visual_quick_cli(tmp_path, child_env):
    """`pfkit demo vade --task visual --quick` as a subprocess: the study's two arms on one seed, labelled
    smoke-test sized, each run's metrics computed on the held-out prompts; a code-task option is refused."""
    out = tmp_path / "demo"
    env = child_env()
    res = subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "vade", "--task", "visual", "--quick",
                          "--out", str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "QUICK: smoke-test sizes, not a result" in res.stdout and "paired by seed" in res.stdout
    results = pd.read_parquet(out / "results.parquet")
    assert sorted(results.arm) == ["uniform", "vade"] and set(results.seed) == {0}
    assert set(results.n_eval) == {16 * 2} and set(results.rollouts_spent) == {64}
    for arm in ("uniform", "vade"):
        run = out / arm / "seed_0"
        assert json.loads((run / "result.json").read_text())["n_val_prompts"] == 16
        assert (run / "curve.csv").is_file() and len(RunDir(run).read("difficulty")) > 0
    assert (out / "vade_visual.png").stat().st_size > 0
    bad = subprocess.run([sys.executable, "-m", "pfkit.cli", "demo", "vade", "--task", "visual", "--budget", "64",
                          "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()] and "--budget not used with --task visual" in bad.stderr
    assert not (tmp_path / "bad").exists()
