"""Multi-process correctness (issue #10) on CPU with gloo: `pfkit fit --trainer.strategy ddp --trainer.devices 2`.

Each test runs `pfkit fit` as a subprocess on a tiny random GPT-2 saved to tmp and a digit-share verifier
(continuous reward, so groups have variance and gradients flow). tests/_dist_helpers.py is put on the
subprocess's PYTHONPATH for the verifier and the DumpState / KillAtStep callbacks.
"""

from __future__ import annotations

import json
import math
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
    cfg["model"]["init_args"].update({"policy": str(tiny / "pol"), "sampler": sampler, "prompts_per_step": 4,
                                      "group_size": 4, "max_new_tokens": 8, "lr": 0.01, **model_kw})
    cfg["data"]["init_args"].update(task="jsonl", prompts_file=str(tiny / "prompts.jsonl"),
                                    verifier="_dist_helpers:digit_share", n_train=12, n_val=4, steps_per_epoch=10)
    cfg["trainer"].update(max_steps=steps, limit_val_batches=0, callbacks=[
        {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "every_n_train_steps": 1, "save_top_k": -1}},
        *callbacks])
    path.write_text(yaml.safe_dump(cfg))
    return path


def pfkit_fit(config: Path, run: Path, *extra: str, devices: int = 1, timeout: int = 600):
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
        # tracker evidence: this step's gathered rewards (both ranks' groups) went into alpha, in the
        # paper's exclusive form (config default): selected counts * 0.2 + new group, the others * 0.999
        ids, r = a["batch"]["prompt_ids"], a["batch"]["rewards"].double()
        if prev is not None:
            alpha = 1 + 0.999 * (prev["alpha"] - 1)
            for j, i in enumerate(ids):
                alpha[i] = 1 + 0.2 * (prev["alpha"][i] - 1) + r[j].sum()
            assert torch.allclose(ta["alpha"], alpha, atol=1e-9), step
        prev = {"alpha": ta["alpha"].clone(), "last_seen": ta["last_seen"].clone()}
        # DDP all-reduced the gradient: identical on both ranks
        for n, g in a["grads"].items():
            assert torch.equal(g, b["grads"][n]), (step, n)
        for n, w in a["params"].items():  # ... so the replicas stay identical
            assert torch.equal(w, b["params"][n]), (step, n)

    assert_replay_matches(tiny, out, step=1)


def assert_replay_matches(tiny: Path, out: Path, step: int, k: int = 4):
    """Replay a DDP step in one process on the union of both ranks' rollouts, from the weights before it:
    the gradient (no clipping, so a wrong loss normaliser would show) equals the DDP-averaged one."""
    from pfkit.data.samplers import GroupBatch, make_sampler
    from pfkit.modules.grpo import GRPOModule

    a, b = dumps(out, 0, step), dumps(out, 1, step)
    payload = [pa if pa is not None else pb for pa, pb in zip(a["batch"]["payload"], b["batch"]["payload"])]
    batch = GroupBatch(**{**a["batch"], "payload": payload})
    m = GRPOModule(policy=str(tiny / "pol"), sampler="vade", prompts_per_step=k, group_size=4, max_new_tokens=8,
                   lr=0.01, max_grad_norm=None)
    if step > 1:
        m.model.load_state_dict(dumps(out, 0, step - 1)["params"], strict=False)
    m.sampler = make_sampler("vade", 12, 4)
    from pfkit.rl import grpo

    stats, _, _ = grpo.update(m.model, m.configure_optimizers(), batch, m.config, generator=m.gen)
    assert stats["effective_samples"] > 0
    for n, p in m.model.named_parameters():
        assert torch.allclose(p.grad, a["grads"][n], rtol=1e-4, atol=1e-7), n


@pytest.mark.slow
def test_grpo_ddp_rank_without_prompts_stays_in_step(tiny, tmp_path):
    """prompts_per_step=1 on 2 ranks: rank 1 rolls out nothing every step (empty share, zero-gradient
    backward, no loss statistics). The run must not deadlock, the replicas stay identical, and the applied
    gradient is still the single-process one (rank 0's loss carries the whole batch's normaliser x 2)."""
    out = tmp_path / "dump"
    cfg = grpo_config(tiny, tmp_path / "c.yaml", steps=2, max_grad_norm=None, prompts_per_step=1,
                      callbacks=[{"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(out)}}])
    res = pfkit_fit(cfg, tmp_path / "run", devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    for step in (1, 2):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        assert b["batch"]["payload"] == [None] and a["batch"]["payload"][0] is not None
        assert torch.equal(a["sampler"]["tracker"]["alpha"], b["sampler"]["tracker"]["alpha"])
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)
    if dumps(out, 0, 1)["grads"]:  # step 1 had a non-zero-variance group
        assert_replay_matches(tiny, out, step=1, k=1)

@pytest.fixture(scope="module")
def tiny_code(tmp_path_factory):
    """Tiny random policy + reward model (scalar head on the policy) saved to tmp, for the code task."""
    from pfkit import models
    from pfkit.models import ScalarHeadModel
    from pfkit.tasks import codegen

    out = tmp_path_factory.mktemp("dist_code")
    probs = codegen.generate(40, seed=5)
    tok = models.train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=300)
    torch.manual_seed(0)
    policy = models.build_policy(tok, n_layer=1, n_embd=32, n_head=2, n_positions=512)
    policy.save_pretrained(out / "pol")
    tok.save_pretrained(out / "pol")
    ScalarHeadModel.from_policy(policy).save(out / "rm", tok)
    return out


@pytest.mark.slow
def test_pfppo_ddp_shards_prompts_and_reduces_metrics_over_ranks(tiny_code, tmp_path):
    """2-process DDP PF-PPO (BR), 2 iterations: each rank rolls out different prompts (4 per step in all),
    both ranks' samples are in rollouts.parquet, R² / pass rate / kept fraction in metrics.csv are those of
    the gathered samples (recomputed here from the parquet), and the replicas stay identical."""
    import pandas as pd

    from pfkit.rl.filtration import r_squared
    from pfkit.runs import RunDir

    out, run = tmp_path / "dump", tmp_path / "run"
    cfg = yaml.safe_load((ROOT / "configs" / "pfppo_codegen.yaml").read_text())
    cfg["model"]["init_args"].update(policy=str(tiny_code / "pol"), reward_model=str(tiny_code / "rm"),
                                     strategy="br", prompts_per_step=4, group_size=3, max_new_tokens=12, ppo_epochs=1,
                                     minibatch_size=4,
                                     actor_lr=1e-3, critic_lr=1e-3, save_policy=True)
    cfg["data"]["init_args"].update(n_train=8, n_val=4, offset=0)
    cfg["trainer"].update(limit_train_batches=2, limit_val_batches=0, callbacks=[
        {"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(out)}}])
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = pfkit_fit(tmp_path / "c.yaml", run, devices=2)
    assert res.returncode == 0, res.stderr[-3000:]

    assert (run / "policy" / "config.json").is_file()  # saved once, by rank 0, at fit end
    ro = RunDir(run).read("rollouts")
    metrics = pd.read_csv(run / "metrics.csv")
    assert sorted(set(ro["step"])) == [0, 1]
    for step in (0, 1):
        rs = ro[ro["step"] == step]
        assert len(rs) == 4 * 3 and rs["prompt_id"].nunique() == 4  # 2 prompts per rank, all different
        assert (rs.groupby("prompt_id")["kept"].sum() == 2).all()  # BR keeps 2 of N per prompt
        row = metrics[metrics["train/rl_step"] == step].iloc[0]
        reward, score = torch.tensor(rs["reward"].values), torch.tensor(rs["score"].values)
        assert row["train/pass_rate"] == pytest.approx(float(score.mean()), abs=1e-6)
        assert row["train/reward"] == pytest.approx(float(reward.mean()), abs=1e-5)
        assert row["train/kept_fraction"] == pytest.approx(2 / 3, abs=1e-6)
        r2 = r_squared(reward.float(), score.float())
        assert (math.isnan(r2) and math.isnan(row["train/r2_all"])) or row["train/r2_all"] == pytest.approx(r2,
                                                                                                          abs=1e-4)
    for step in (1, 2):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)


@pytest.mark.slow
def test_noisemask_pretrain_and_finetune_run_under_ddp(tmp_path):
    """Noise-mask pretrain (policy + classifier, one backward) and the fine-tune from its checkpoint, both as
    2-process DDP on the synthetic set: they finish, epoch metrics are reduced over ranks, one rank writes the
    mask panel, and the checkpoint holds the step count of the DDP run (each rank saw half the batches)."""
    import pandas as pd

    tiny = ["--model.init_args.widths", "[4, 8, 8, 8]", "--data.init_args.batch_size", "16",
            "--data.init_args.train_subset", "64", "--data.init_args.eval_subset", "32", "--trainer.max_epochs", "1"]
    pre = tmp_path / "pre"
    res = pfkit_fit(ROOT / "configs" / "noisemask_pretrain.yaml", pre, *tiny, devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (pre / "masks").is_dir() and len(list((pre / "masks").glob("*.npz"))) == 1
    m = pd.read_csv(pre / "metrics.csv")
    assert m["val/masked_acc"].notna().any()
    ft = tmp_path / "ft"
    res = pfkit_fit(ROOT / "configs" / "noisemask_finetune.yaml", ft, *tiny,
                    "--model.init_args.checkpoint", str(pre / "checkpoints" / "last.ckpt"), devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert pd.read_csv(ft / "metrics.csv")["val/acc"].notna().any()


@pytest.mark.slow
def test_sft_ddp_gathers_pass_rates_and_saves_the_policy_once(tmp_path):
    """SFT from scratch as 2-process DDP finishes (no hang in the collective run-folder lookup at fit end),
    writes RUN_DIR/policy, and logs a val success-rate split that sums to 1 (rates gathered from both ranks;
    this check alone cannot tell 4 from 8 problems)."""
    import pandas as pd

    run = tmp_path / "run"
    res = pfkit_fit(ROOT / "configs" / "sft_codegen.yaml", run, "--model.init_args.n_layer", "1",
                    "--model.init_args.n_embd", "32", "--model.init_args.n_head", "2",
                    "--model.init_args.vocab_size", "300", "--model.init_args.eval_samples", "2",
                    "--model.init_args.eval_max_new_tokens", "8", "--data.init_args.n_train", "64",
                    "--data.init_args.n_val", "8", "--data.init_args.batch_size", "4", "--trainer.max_steps", "4",
                    "--trainer.val_check_interval", "4", devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "policy" / "config.json").is_file()
    m = pd.read_csv(run / "metrics.csv")
    frac = [c for c in m.columns if c.startswith("val/frac_")]
    assert frac, list(m.columns)
    row = m[frac].dropna().iloc[-1]
    assert row.sum() == pytest.approx(1.0) and all(abs(v * 8 - round(v * 8)) < 1e-6 for v in row)


@pytest.mark.slow
def test_grpo_dapo_filter_refill_rounds_stay_in_sync_under_ddp(tiny, tmp_path):
    """DAPO dynamic sampling under 2-rank DDP: refill rounds (oversample 1.5) are proposed identically on both
    ranks and split round-robin again; every generated group feeds both ranks' trackers; replicas agree."""
    out = tmp_path / "dump"
    cfg = grpo_config(tiny, tmp_path / "c.yaml", sampler="dapo_filter", steps=2, max_grad_norm=None,
                      sampler_options={"oversample": 1.5, "max_rounds": 3},
                      callbacks=[{"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(out)}}])
    res = pfkit_fit(cfg, tmp_path / "run", devices=2)
    assert res.returncode == 0, res.stderr[-3000:]
    for step in (1, 2):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        ta, tb = a["sampler"]["tracker"], b["sampler"]["tracker"]
        assert torch.equal(ta["alpha"], tb["alpha"]) and torch.equal(ta["visits"], tb["visits"])
        assert a["batch"]["generated_ids"] == b["batch"]["generated_ids"]
        assert a["sampler"]["rollouts_spent"] == b["sampler"]["rollouts_spent"]
        assert int(ta["visits"].sum()) == sum(len(dumps(out, 0, s)["batch"]["generated_ids"]) for s in range(1, step + 1))
        assert all((pa is None) != (pb is None) for pa, pb in zip(a["batch"]["payload"], b["batch"]["payload"]))
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)


@pytest.mark.slow
def test_reward_model_ddp_val_acc_is_over_all_ranks_pairs_and_saved_once(tiny_code, tmp_path):
    """2-process DDP Bradley-Terry training on a fixed samples parquet with an odd number (9) of held-out
    pairs, so Lightning's DistributedSampler pads rank 1 with a duplicate of pair 0. val/loss and val/acc
    must equal the values on all 9 pairs computed in one process with the saved (final) weights, not one
    rank's pairs and not the padded 10; the normalisation is the mean/std of the raw scores of all training
    responses; the model folder is written once, by rank 0."""
    import random

    import pandas as pd

    from pfkit import models
    from pfkit.data.preference import PreferenceDataModule
    from pfkit.models import ScalarHeadModel
    from pfkit.tasks import codegen

    rng, rows = random.Random(0), []
    for p in codegen.generate(60, seed=11):
        wrong = codegen.wrong_completion(p, rng)
        if wrong is not None:
            rows += [{"prompt_id": p.task_id, "prompt": p.prompt, "response": p.reference, "passed": 1},
                     {"prompt_id": p.task_id, "prompt": p.prompt, "response": wrong, "passed": 0}]
    samples = pd.DataFrame(rows)
    n_prompts = samples["prompt_id"].nunique()
    val_fraction = 9.2 / n_prompts  # round(n * f) = 9 held-out prompts, one pair each
    samples.to_parquet(tmp_path / "samples.parquet")
    cfg = {"seed_everything": 0,
           "trainer": {"max_epochs": 1, "num_sanity_val_steps": 0, "enable_checkpointing": False,
                       "log_every_n_steps": 1, "enable_progress_bar": False,
                       "callbacks": [{"class_path": "_dist_helpers.RecordSaves",
                                      "init_args": {"file": str(tmp_path / "saves.txt")}}]},
           "model": {"class_path": "pfkit.modules.reward.RewardModule",
                     "init_args": {"policy": str(tiny_code / "pol"), "lr": 3e-3, "warmup_steps": 1}},
           "data": {"class_path": "pfkit.data.preference.PreferenceDataModule",
                    "init_args": {"policy": str(tiny_code / "pol"), "samples": str(tmp_path / "samples.parquet"),
                                  "max_pairs_per_prompt": 1, "val_fraction": val_fraction, "batch_size": 4}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    res = pfkit_fit(tmp_path / "c.yaml", run, devices=2)
    assert res.returncode == 0, res.stderr[-3000:]

    assert (tmp_path / "saves.txt").read_text().split() == ["0"]  # one save, by rank 0
    rm = ScalarHeadModel.load(run / "reward_model")
    _, tok = models.load_policy(str(tiny_code / "pol"))
    dm = PreferenceDataModule(samples=samples, max_pairs_per_prompt=1, val_fraction=val_fraction)
    dm.tokenizer = tok
    dm.setup()
    vp = dm.val_pairs
    assert len(vp) == 9
    c = rm.score_texts(tok, list(vp.prompt), list(vp.chosen), normalize=False).double()
    r = rm.score_texts(tok, list(vp.prompt), list(vp.rejected), normalize=False).double()
    loss, correct = -torch.nn.functional.logsigmoid(c - r), (c > r).double()
    m = pd.read_csv(run / "metrics.csv")
    val = m.dropna(subset=["val/acc"]).iloc[-1]
    assert val["val/acc"] == pytest.approx(float(correct.mean()), abs=1e-6)
    assert val["val/loss"] == pytest.approx(float(loss.mean()), abs=1e-4)
    assert rm.meta["val/acc"] == pytest.approx(val["val/acc"])
    print(f"\nRM DDP val/acc {val['val/acc']:.4f} val/loss {val['val/loss']:.5f}; one process on all 9 pairs "
          f"{float(correct.mean()):.4f} / {float(loss.mean()):.5f}; rank 0's 5 pairs {float(correct[0::2].mean()):.4f}"
          f" / {float(loss[0::2].mean()):.5f}; padded 10 {float(torch.cat([correct, correct[:1]]).mean()):.4f}")
    # the alternatives a wrong reduction would give are distinguishable from the right value here
    padded = float(torch.cat([loss, loss[:1]]).mean())
    assert abs(padded - float(loss.mean())) > 1e-3 and abs(float(loss[0::2].mean()) - float(loss.mean())) > 1e-3
    # calibration: mean/std of the raw scores of *all* training responses (each rank scored half)
    raw = rm.score_texts(tok, list(dm.train_samples.prompt), list(dm.train_samples.response), normalize=False)
    assert float(rm.reward_mean) == pytest.approx(raw.mean().item(), abs=1e-4)
    assert float(rm.reward_std) == pytest.approx(raw.std().item(), abs=1e-4)
