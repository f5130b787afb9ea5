"""Multi-process correctness (issue #10) on CPU with gloo: `pfkit fit --trainer.strategy ddp --trainer.devices 2`.

Each test runs `pfkit fit` as a subprocess on a tiny random GPT-2 saved to tmp and a digit-share verifier
(continuous reward, so groups have variance and gradients flow). tests/_dist_helpers.py is put on the
subprocess's PYTHONPATH for the verifier and the DumpState / KillAtStep callbacks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pfkit import distributed as dist

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pure helpers (fast)
def test_helpers_are_single_process_no_ops():
    assert not dist.is_distributed() and dist.rank() == 0 and dist.world_size() == 1
    assert dist.all_gather_object({"a": 1}) == [{"a": 1}]
    assert dist.all_reduce(3) == 3 and dist.all_reduce(2.5, op="max") == 2.5
    t = torch.arange(3)
    assert dist.gather_cat(t) is t
    calls = []

    def fn(ids):
        calls.append(ids)
        return torch.ones(len(ids), 2), list(ids)

    r, p = dist.sharded_rollout([4, 1, 3], fn, 2)
    assert calls == [[4, 1, 3]] and p == [4, 1, 3] and r.shape == (3, 2)


def test_shard_is_round_robin_and_covers_everything_once():
    ids = list(range(7))
    shares = [dist.shard(ids, r, 3) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(sum(shares, [])) == ids


# ------------------------------------------------------------------------------ subprocess runs
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random GPT-2 + tokenizer saved to tmp, and a JSONL prompt file."""
    from pfkit.models import build_policy, train_tokenizer

    out = tmp_path_factory.mktemp("dist")
    prompts = [f"Count {i}: " + " ".join(str((i * 7 + j) % 10) for j in range(4)) for i in range(16)]
    tok = train_tokenizer(prompts * 5 + ["0123456789 abcdef " * 5], vocab_size=300)
    torch.manual_seed(0)
    build_policy(tok, n_layer=2, n_embd=32, n_head=2, n_positions=64).save_pretrained(out / "pol")
    tok.save_pretrained(out / "pol")
    with open(out / "prompts.jsonl", "w") as f:
        for i, p in enumerate(prompts):
            f.write(json.dumps({"id": f"p{i}", "prompt": p}) + "\n")
    return out


def grpo_config(tiny: Path, path: Path, *, sampler="vade", steps=3, callbacks=(), **model_kw) -> Path:
    """configs/grpo_codegen.yaml shrunk: tiny policy, 12 prompts, 4 prompts x 4 completions, a checkpoint
    every step, and the given extra callbacks."""
    cfg = yaml.safe_load((ROOT / "configs" / "grpo_codegen.yaml").read_text())
    cfg["model"]["init_args"].update(policy=str(tiny / "pol"), sampler=sampler, prompts_per_step=4, group_size=4,
                                     max_new_tokens=8, lr=0.01, **model_kw)
    cfg["data"]["init_args"].update(task="jsonl", prompts_file=str(tiny / "prompts.jsonl"),
                                    verifier="_dist_helpers:digit_share", n_train=12, n_val=4, steps_per_epoch=10)
    cfg["trainer"].update(max_steps=steps, limit_val_batches=0, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": -1}},
        *callbacks])
    path.write_text(yaml.safe_dump(cfg))
    return path


def pfkit_fit(config: Path, run: Path, *extra: str, devices: int = 1, timeout: int = 240):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "pfkit.cli", "fit", "-c", str(config), "--run_dir", str(run), *extra]
    if devices > 1:
        args += ["--trainer.strategy", "ddp", "--trainer.devices", str(devices), "--trainer.accelerator", "cpu"]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def dumps(folder: Path, rank: int, step: int) -> dict:
    return torch.load(folder / f"state-r{rank}-s{step}.pt", weights_only=False)


@pytest.mark.slow
def test_grpo_vade_ddp_tracker_agrees_selection_split_and_step_equals_single_process(tiny, tmp_path):
    """2-process DDP GRPO+VADE, 3 steps: (1) both ranks hold the same alpha/beta/RNG after every step;
    (2) the ranks made one selection, split between them (each selected prompt rolled out by exactly one
    rank); (3) the tracker holds the evidence of *all* groups; (4) the gradient each rank applied equals
    the single-process gradient on the union of both ranks' rollouts (DDP 2 x B/2 == 1 x B)."""
    out = tmp_path / "dump"
    cfg = grpo_config(tiny, tmp_path / "c.yaml", max_grad_norm=None,
                      callbacks=[{"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(out)}}])
    res = pfkit_fit(cfg, tmp_path / "run", devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    from pfkit.data.samplers import GroupBatch
    from pfkit.modules.grpo import GRPOModule
    from pfkit.runs import RunDir

    G = 4
    rollouts = RunDir(tmp_path / "run").read("rollouts")
    prev = None
    for step in (1, 2, 3):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        ta, tb = a["sampler"]["tracker"], b["sampler"]["tracker"]
        for key in ("alpha", "beta", "last_seen", "visits"):
            assert torch.equal(ta[key], tb[key]), (step, key)
        assert torch.equal(ta["rng_state"], tb["rng_state"]) and ta["step_count"] == tb["step_count"] == step
        assert a["batch"]["prompt_ids"] == b["batch"]["prompt_ids"] and len(set(a["batch"]["prompt_ids"])) == 4
        mine = [[j for j, p in enumerate(d["batch"]["payload"]) if p is not None] for d in (a, b)]
        assert mine == [[0, 2], [1, 3]]  # round-robin split, every group exactly once
        # rollouts.parquet: each rank wrote its own 2 groups x G rows
        rs = rollouts[rollouts["step"] == step]
        assert len(rs) == 4 * G and rs.groupby("prompt_id").size().eq(G).all()
        # tracker evidence: this step's gathered rewards (both ranks' groups) went into alpha, with the
        # local decay (visits clock, 0.8) before and the global decay (0.99) after, as in BetaTracker
        ids, r = a["batch"]["prompt_ids"], a["batch"]["rewards"].double()
        if prev is not None:
            alpha = prev["alpha"].clone()
            for j, i in enumerate(ids):
                if int(prev["last_seen"][i]) >= 0:
                    alpha[i] = 1 + 0.8 * (alpha[i] - 1)
                alpha[i] += r[j].sum()
            assert torch.allclose(ta["alpha"], 1 + 0.99 * (alpha - 1), atol=1e-9), step
        prev = {"alpha": ta["alpha"].clone(), "last_seen": ta["last_seen"].clone()}
        # DDP all-reduced the gradient: identical on both ranks
        for n, g in a["grads"].items():
            assert torch.equal(g, b["grads"][n]), (step, n)
        for n, w in a["params"].items():  # ... so the replicas stay identical
            assert torch.equal(w, b["params"][n]), (step, n)

    # replay step 1 in one process on the union of both ranks' rollouts, from the initial weights: the
    # gradient (no clipping, so a wrong loss normaliser would show) equals the DDP-averaged one
    a, b = dumps(out, 0, 1), dumps(out, 1, 1)
    payload = [pa if pa is not None else pb for pa, pb in zip(a["batch"]["payload"], b["batch"]["payload"])]
    batch = GroupBatch(**{**a["batch"], "payload": payload})
    m = GRPOModule(policy=str(tiny / "pol"), sampler="vade", prompts_per_step=4, group_size=4, max_new_tokens=8,
                   lr=0.01, max_grad_norm=None)
    from pfkit.data.samplers import make_sampler

    m.sampler = make_sampler("vade", 12, 4)
    m.init_optimizer()
    stats = m._update(batch)
    assert stats["effective_samples"] > 0
    for n, p in m.model.named_parameters():
        assert torch.allclose(p.grad, a["grads"][n], rtol=1e-4, atol=1e-7), n
