"""FSDP full sharding (issue #10) on CPU with gloo: torch FSDP2 (``fully_shard``) through Lightning's
``ModelParallelStrategy``, 2 processes, as in configs/gpu/*_fsdp.yaml.

(Lightning's ``FSDPStrategy``, FSDP1, does not run here: it refuses ``accelerator='cpu'``, and with that check
lifted it wraps the whole LightningModule as one unit and runs ``training_step`` inside that unit's forward,
where the manual ``backward`` of GRPO/PF-PPO fails FSDP1's state check. See docs/DEVELOPING.md.)

Each module shards its trained models in ``configure_model`` (``pfkit.distributed.fully_shard_models``) and
samples inside ``pfkit.distributed.gathered_params``. The GRPO test replays the FSDP steps in one process
(same gradient); GRPO and PF-PPO runs are resumed from a checkpoint and must continue exactly.
"""

from __future__ import annotations

import socket

import pytest
import torch
import yaml
from test_distributed import ROOT, assert_replay_matches, dumps, grpo_config, pfkit_fit, tiny  # noqa: F401
from test_resume import _assert_same_state

from pfkit import distributed as dist

FSDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2",
        "--trainer.strategy", "lightning.pytorch.strategies.ModelParallelStrategy",
        "--trainer.strategy.data_parallel_size", "2", "--trainer.strategy.tensor_parallel_size", "1",
        "--trainer.strategy.save_distributed_checkpoint", "false"]


def test_fsdp_helpers_are_no_ops_without_sharding():
    m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert not dist.is_sharded(m)
    with dist.gathered_params(m):
        y = m(torch.ones(1, 3))
    assert y.shape == (1, 1)
    assert dist.full_state_dict(m).keys() == before.keys()
    assert all(torch.equal(dist.full_state_dict(m)[k], v) for k, v in before.items())
    t = torch.arange(3)
    assert dist.full_value(t) is t and dist.full_value(2.0) == 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_fsdp_helpers_on_two_gloo_processes(tiny, tmp_path):  # noqa: F811
    """fully_shard_models makes every GPT2Block and the model a unit and splits the weights over the 2
    ranks; inside gathered_params the ranks run 1 and 3 forwards (no collective) and get the unsharded
    model's logits; full_state_dict gives rank 0 the full weights; afterwards the model is sharded again."""
    import torch.multiprocessing as mp
    from _dist_helpers import fsdp_helpers_worker

    mp.spawn(fsdp_helpers_worker, args=(_free_port(), str(tiny / "pol"), str(tmp_path / "out")), nprocs=2)
    r0, r1 = (torch.load(tmp_path / f"out-r{r}.pt", weights_only=False) for r in (0, 1))
    assert r0["units"] == ["FSDPGPT2Block", "FSDPGPT2Block", "FSDPGPT2LMHeadModel"]
    assert r0["local"] + r1["local"] >= r0["full"] and max(r0["local"], r1["local"]) < 0.6 * r0["full"]
    assert (r0["n_out"], r1["n_out"]) == (1, 3)
    assert r0["max_err"] < 1e-5 and r1["max_err"] < 1e-5
    assert r0["state_equal"] and "transformer.wte.weight" in r0["state_keys"] and r1["state_keys"] == []
    assert r0["sharded_after"] and r1["sharded_after"] and r0["grads"] and r1["grads"]


# ------------------------------------------------------------------------------------------- GRPO
@pytest.fixture(scope="module")
def grpo_fsdp(tiny, tmp_path_factory):  # noqa: F811
    """2-process FSDP GRPO+VADE, 2 steps, a checkpoint and a state dump (DumpState) after every step."""
    tmp = tmp_path_factory.mktemp("grpo_fsdp")
    cfg = grpo_config(tiny, tmp / "c.yaml", steps=2, max_grad_norm=None,
                      callbacks=[{"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(tmp / "dump")}}])
    res = pfkit_fit(cfg, tmp / "run", *FSDP)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_grpo_vade_fsdp_trains_sharded_with_the_single_process_gradient(tiny, grpo_fsdp):  # noqa: F811
    """The policy is sharded (DTensor parameters), both ranks hold the same tracker (alpha, beta, visits,
    RNG) and the same full weights after every step, the weights moved, and each step's gradient equals the
    single-process gradient on the union of both ranks' rollouts from the same weights."""
    from pfkit.models import load_policy

    out = grpo_fsdp / "dump"
    for step in (1, 2):
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        assert a["param_types"] == b["param_types"] == {"DTensor"}
        ta, tb = a["sampler"]["tracker"], b["sampler"]["tracker"]
        for key in ("alpha", "beta", "last_seen", "visits", "rng_state"):
            assert torch.equal(ta[key], tb[key]), (step, key)
        assert ta["step_count"] == tb["step_count"] == step
        assert a["batch"]["prompt_ids"] == b["batch"]["prompt_ids"]
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)
        assert_replay_matches(tiny, out, step=step)
    init, _ = load_policy(str(tiny / "pol"))
    final = dumps(out, 0, 2)["params"]
    assert max((final[n] - p).abs().max().item() for n, p in init.named_parameters()) > 1e-3


@pytest.mark.slow
def test_grpo_vade_fsdp_resumes_exactly(tiny, grpo_fsdp):  # noqa: F811
    """Resuming the FSDP run from its step-1 checkpoint (full weights, one file) gives the same step-2
    rollouts and the same final tracker, RNG streams, optimizer state and weights as the uninterrupted run."""
    from pfkit.runs import RunDir

    resumed = grpo_fsdp / "resumed"
    res = pfkit_fit(grpo_config(tiny, grpo_fsdp / "r.yaml", steps=2), resumed, *FSDP,
                    "--ckpt_path", str(grpo_fsdp / "run" / "checkpoints" / "epoch=0-step=1.ckpt"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "not resumable" not in res.stderr  # the prompt loader's state is in the checkpoint
    cols = ["step", "prompt_id", "sample_idx", "response", "reward"]
    ra = RunDir(grpo_fsdp / "run").read("rollouts")[cols]
    rb = RunDir(resumed).read("rollouts")[cols]
    assert sorted(set(rb["step"])) == [2]
    x = ra[ra["step"] == 2].sort_values(cols[:3]).reset_index(drop=True)
    y = rb.sort_values(cols[:3]).reset_index(drop=True)
    assert x[cols[:4]].equals(y[cols[:4]]) and ((x["reward"] - y["reward"]).abs() < 1e-9).all()
    load = lambda run: torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)  # noqa: E731
    _assert_same_state(load(grpo_fsdp / "run"), load(resumed))


# ----------------------------------------------------------------------------------------- PF-PPO
def pfppo_config(path, dump):
    """configs/pfppo_codegen.yaml on the embedded policy + reward model (they write real code, so every
    iteration has responses to learn from), 4 prompts x 3 samples, 1 iteration per epoch, a checkpoint per
    iteration: epoch boundaries make PF-PPO's shuffled prompt order resumable."""
    cfg = yaml.safe_load((ROOT / "configs" / "pfppo_codegen.yaml").read_text())
    cfg["model"]["init_args"].update(policy="embedded", reward_model="embedded", strategy="br", prompts_per_step=4,
                                     group_size=3, max_new_tokens=24, ppo_epochs=1, minibatch_size=4, save_policy=True)
    cfg["data"]["init_args"].update(n_train=8, n_val=4, offset=0)
    cfg["trainer"].update(max_epochs=2, limit_train_batches=1, limit_val_batches=0, enable_checkpointing=True,
                          callbacks=[{"class_path": "_dist_helpers.DumpState", "init_args": {"out": str(dump)}},
                                     {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                      "init_args": {"save_last": True, "every_n_train_steps": 1,
                                                    "save_top_k": -1}}])
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def pfppo_fsdp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pfppo_fsdp")
    res = pfkit_fit(pfppo_config(tmp / "c.yaml", tmp / "dump"), tmp / "run", *FSDP)
    assert res.returncode == 0, res.stderr[-3000:]
    return tmp


@pytest.mark.slow
def test_pfppo_fsdp_trains_sharded_and_saves_the_full_policy(pfppo_fsdp):
    """2 PF-PPO iterations under FSDP: policy and critic sharded, replicas identical, the policy moved, and
    RUN_DIR/policy (gathered to rank 0 at fit end) holds exactly the final weights."""
    from pfkit.models import load_policy

    out, run = pfppo_fsdp / "dump", pfppo_fsdp / "run"
    steps = sorted(int(p.stem.split("-s")[1]) for p in out.glob("state-r0-s*.pt"))
    assert len(steps) == 2
    for step in steps:
        a, b = dumps(out, 0, step), dumps(out, 1, step)
        assert a["param_types"] == {"DTensor"}
        for n, w in a["params"].items():
            assert torch.equal(w, b["params"][n]), (step, n)
    saved, _ = load_policy(str(run / "policy"))
    init, _ = load_policy("embedded")
    final = dumps(out, 0, steps[-1])["params"]
    for n, p in saved.named_parameters():
        assert torch.equal(p, final[n]), n
    assert max((p - q).abs().max().item() for p, q in zip(saved.parameters(), init.parameters())) > 1e-6
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ck["pfppo"]["rl_step"] == 2 and "critic.head.weight" in ck["state_dict"]


@pytest.mark.slow
def test_pfppo_fsdp_resumes_exactly(pfppo_fsdp):
    """Resumed from the end of iteration 1, iteration 2 samples the same prompts and completions and ends
    in the same weights (policy and critic), Adam state and filter RNG streams as the uninterrupted run."""
    from pfkit.runs import RunDir

    first = sorted((pfppo_fsdp / "run" / "checkpoints").glob("epoch=0-*.ckpt"))
    assert len(first) == 1
    resumed = pfppo_fsdp / "resumed"
    res = pfkit_fit(pfppo_config(pfppo_fsdp / "r.yaml", pfppo_fsdp / "dump_r"), resumed, *FSDP,
                    "--ckpt_path", str(first[0]))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "not resumable" not in res.stderr  # PF-PPO's ResumableLoader state is in the checkpoint
    cols = ["step", "prompt_id", "sample_idx", "response", "reward", "kept"]
    ra, rb = RunDir(pfppo_fsdp / "run").read("rollouts")[cols], RunDir(resumed).read("rollouts")[cols]
    assert sorted(set(rb["step"])) == [1]
    x = ra[ra["step"] == 1].sort_values(cols[:3]).reset_index(drop=True)
    y = rb.sort_values(cols[:3]).reset_index(drop=True)
    assert x[["prompt_id", "sample_idx", "response", "kept"]].equals(y[["prompt_id", "sample_idx", "response", "kept"]])
    assert ((x["reward"] - y["reward"]).abs() < 1e-5).all()
    a = torch.load(pfppo_fsdp / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["global_step"] == b["global_step"] and a["pfppo"]["rl_step"] == b["pfppo"]["rl_step"] == 2
    assert all(torch.equal(x, y) for x, y in zip(a["pfppo"]["filter_gen_ranks"], b["pfppo"]["filter_gen_ranks"]))
    for n, w in a["state_dict"].items():
        assert torch.allclose(w, b["state_dict"][n], rtol=0, atol=1e-6), n
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys() and all(int(oa[k]["step"]) == int(ob[k]["step"]) for k in oa)


# -------------------------------------------------------------------------------------------- SFT
@pytest.mark.slow
def test_sft_fsdp_validates_by_sampling_and_saves_the_full_policy(tmp_path):
    """SFT from scratch under FSDP: validation samples completions from the sharded policy (gathered),
    logs a success-rate split over all 8 val problems, and RUN_DIR/policy equals the final checkpoint."""
    import pandas as pd

    from pfkit.models import load_policy

    run = tmp_path / "run"
    res = pfkit_fit(ROOT / "configs" / "sft_codegen.yaml", run, "--model.init_args.n_layer", "1",
                    "--model.init_args.n_embd", "32", "--model.init_args.n_head", "2",
                    "--model.init_args.vocab_size", "300", "--model.init_args.eval_samples", "2",
                    "--model.init_args.eval_max_new_tokens", "8", "--data.init_args.n_train", "64",
                    "--data.init_args.n_val", "8", "--data.init_args.batch_size", "4", "--trainer.max_steps", "4",
                    "--trainer.val_check_interval", "4", *FSDP)
    assert res.returncode == 0, res.stderr[-3000:]
    m = pd.read_csv(run / "metrics.csv")
    row = m[[c for c in m.columns if c.startswith("val/frac_")]].dropna().iloc[-1]
    assert row.sum() == pytest.approx(1.0) and all(abs(v * 8 - round(v * 8)) < 1e-6 for v in row)
    saved, _ = load_policy(str(run / "policy"))
    ck = torch.load(next((run / "checkpoints").glob("*.ckpt")), weights_only=False)
    assert ck["global_step"] == 4
    for n, p in saved.named_parameters():
        assert torch.equal(p, ck["state_dict"]["model." + n]), n
