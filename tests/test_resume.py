"""Kill-and-resume (issue #10): a GRPO+VADE run hard-killed (SIGKILL) after step k and resumed from its
last checkpoint continues exactly like the uninterrupted run: same rollouts at the next steps, same tracker
(alpha, beta, visits, RNG), optimizer state, step counters and weights at the end."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_distributed import grpo_config, pfkit_fit, tiny  # noqa: F401  (fixture)


def _final(run):
    ck = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    return ck


def _assert_same_state(a: dict, b: dict):
    assert a["global_step"] == b["global_step"]
    sa, sb = a["grpo_sampler"], b["grpo_sampler"]
    for key in ("alpha", "beta", "last_seen", "visits", "rng_state"):
        assert torch.equal(sa["tracker"][key], sb["tracker"][key]), key
    assert sa["tracker"]["step_count"] == sb["tracker"]["step_count"]
    assert torch.equal(sa["rng_state"], sb["rng_state"]) and sa["rollouts_spent"] == sb["rollouts_spent"]
    assert all(torch.equal(x, y) for x, y in zip(a["grpo_rng_ranks"], b["grpo_rng_ranks"]))
    for n, w in a["state_dict"].items():
        assert torch.allclose(w, b["state_dict"][n], rtol=0, atol=1e-6), n
    oa, ob = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    assert oa.keys() == ob.keys()
    for k in oa:
        assert int(oa[k]["step"]) == int(ob[k]["step"])
        assert torch.allclose(oa[k]["exp_avg"], ob[k]["exp_avg"], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2], ids=["single", "ddp2"])
def test_grpo_vade_kill_and_resume_equals_uninterrupted(tiny, tmp_path, devices):  # noqa: F811
    from pfkit.runs import RunDir

    steps, k = 4, 2
    full = tmp_path / "full"
    res = pfkit_fit(grpo_config(tiny, tmp_path / "full.yaml", steps=steps), full, devices=devices)
    assert res.returncode == 0, res.stderr[-3000:]
    cut = tmp_path / "cut"
    kill = {"class_path": "_dist_helpers.KillAtStep", "init_args": {"step": k}}
    res = pfkit_fit(grpo_config(tiny, tmp_path / "cut.yaml", steps=steps, callbacks=[kill]), cut, devices=devices)
    assert res.returncode != 0  # SIGKILLed mid-run
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == k
    res = pfkit_fit(grpo_config(tiny, tmp_path / "resume.yaml", steps=steps), cut,
                    "--ckpt_path", str(cut / "checkpoints" / "last.ckpt"), devices=devices)
    assert res.returncode == 0, res.stderr[-3000:]

    cols = ["step", "prompt_id", "sample_idx", "response", "reward", "advantage"]
    ra = RunDir(full).read("rollouts")[cols].sort_values(cols[:3]).reset_index(drop=True)
    rb = RunDir(cut).read("rollouts")[cols].sort_values(cols[:3]).reset_index(drop=True)
    assert sorted(set(rb["step"])) == list(range(1, steps + 1))  # no step lost or repeated
    for s in range(k + 1, steps + 1):  # the steps after the kill: same prompts, same completions
        x, y = ra[ra["step"] == s].reset_index(drop=True), rb[rb["step"] == s].reset_index(drop=True)
        assert x[cols[:4]].equals(y[cols[:4]]), s
        assert ((x["reward"] - y["reward"]).abs() < 1e-9).all() and ((x["advantage"] - y["advantage"]).abs() < 1e-5).all()
    _assert_same_state(_final(full), _final(cut))


@pytest.mark.slow
def test_resume_keeps_the_whole_history(tiny, tmp_path):  # noqa: F811
    """Issue #19: a run killed at step 3 of 4 (checkpoint every 2 steps, so it had logged and written step 3
    after its checkpoint) and resumed from last.ckpt into the same folder ends with the uninterrupted run's
    WHOLE metrics.csv (every row and column but the wall-clock timings), rollouts and difficulty tables
    (each step once), and Lightning does not warn that the dataloader is not resumable."""
    import pandas as pd
    import yaml

    from pfkit.runs import RunDir

    def config(name, callbacks=()):
        path = grpo_config(tiny, tmp_path / name, steps=4, callbacks=list(callbacks))
        cfg = yaml.safe_load(path.read_text())
        cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = 2
        path.write_text(yaml.safe_dump(cfg))
        return path

    full, cut = tmp_path / "full", tmp_path / "cut"
    res = pfkit_fit(config("full.yaml"), full)
    assert res.returncode == 0, res.stderr[-3000:]
    kill = {"class_path": "_dist_helpers.KillAtStep", "init_args": {"step": 3}}
    res = pfkit_fit(config("cut.yaml", [kill]), cut)
    assert res.returncode != 0
    assert torch.load(cut / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert 3 in set(RunDir(cut).read("rollouts")["step"])  # the killed run got past its checkpoint
    res = pfkit_fit(config("resume.yaml"), cut, "--ckpt_path", str(cut / "checkpoints" / "last.ckpt"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "not resumable" not in res.stderr

    a, b = pd.read_csv(full / "metrics.csv"), pd.read_csv(cut / "metrics.csv")
    assert list(a.columns) == list(b.columns)
    cols = [c for c in a.columns if "time" not in c]  # wall-clock seconds differ between any two runs
    assert len(a) == len(b) and a["step"].tolist() == b["step"].tolist()
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=False, rtol=0, atol=1e-5)
    for table, key in (("rollouts", ["step", "prompt_id", "sample_idx"]), ("difficulty", ["step", "prompt_id"])):
        x, y = RunDir(full).read(table), RunDir(cut).read(table)
        assert not y.duplicated(key).any(), table
        assert len(x) == len(y) and sorted(set(x["step"])) == sorted(set(y["step"])) == [1, 2, 3, 4], table
    assert list((cut / "rollouts.parquet" / "_superseded").glob("part-*")), "the killed run's step 3 is kept aside"


def test_run_logger_keeps_the_rows_before_the_resumed_step(tmp_path):
    """RunLogger: every row is on disk once logged; resume=True keeps metrics.csv and the rows the resumed
    run logs again (its first step on) replace the old ones; without resume, Lightning's fresh file."""
    import pandas as pd

    from pfkit.callbacks import RunLogger

    a = RunLogger(str(tmp_path))
    for s in range(4):
        a.log_metrics({"loss": float(s)}, step=s)
    assert pd.read_csv(tmp_path / "metrics.csv")["step"].tolist() == [0, 1, 2, 3]  # no finalize needed
    b = RunLogger(str(tmp_path), resume=True)  # resumed from a checkpoint taken after step 1
    b.log_metrics({"loss": 20.0, "val/acc": 0.5}, step=2)
    b.log_metrics({"loss": 30.0}, step=3)
    df = pd.read_csv(tmp_path / "metrics.csv")
    assert df["step"].tolist() == [0, 1, 2, 3] and df["loss"].tolist() == [0.0, 1.0, 20.0, 30.0]
    assert list(df.columns) == ["loss", "step", "val/acc"] and df["val/acc"].isna().tolist() == [True, True, False, True]
    c = RunLogger(str(tmp_path))  # a new run in the same folder: starts over, as Lightning does, and says so
    with pytest.warns(UserWarning, match="from an earlier run in this folder is replaced; pass --ckpt_path"):
        c.log_metrics({"loss": 5.0}, step=0)
    d = tmp_path / "fresh"
    d.mkdir()
    (d / "config.yaml").write_text("x: 1\n")  # a run folder with other files but no metrics: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RunLogger(str(d)).log_metrics({"loss": 1.0}, step=0)
    assert pd.read_csv(tmp_path / "metrics.csv")["loss"].tolist() == [5.0]


def test_resumable_loader_continues_the_epoch_in_its_shuffle_order():
    """Lightning's stateful-dataloader protocol: a loader restored from the state taken k batches into epoch
    2 yields the rest of epoch 2 in the order the uninterrupted loader had; from an end-of-epoch state it
    yields the next epoch's order."""
    from pfkit.data._loader import ResumableLoader

    def loader():
        return ResumableLoader(list(range(10)), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))

    ref = loader()
    epochs = [[b.tolist() for b in ref] for _ in range(3)]
    assert epochs[0] != epochs[1]  # shuffled anew each epoch
    live = loader()
    _ = [b for b in live]  # epoch 1 done
    end_of_epoch = live.state_dict()
    it = iter(live)
    next(it), next(it)  # two batches into epoch 2
    mid = live.state_dict()
    resumed = loader()
    resumed.load_state_dict(mid)
    assert [b.tolist() for b in resumed] == epochs[1][2:]
    assert [b.tolist() for b in resumed] == epochs[2]  # and the epoch after continues as it would have
    resumed = loader()
    resumed.load_state_dict(end_of_epoch)
    assert [b.tolist() for b in resumed] == epochs[1]


def test_resumable_loader_after_an_epoch_cut_short_starts_the_next_epoch():
    """A state taken at the last batch of an epoch cut short (limit_train_batches) has served fewer batches
    than the loader's length; Lightning resumes it in the next epoch (set_epoch first), which must start at
    its first batch, in the order the uninterrupted loader had: with a RandomSampler and with the
    DistributedSampler Lightning puts in under DDP/FSDP (the FSDP resume that replayed other prompts)."""
    from lightning.fabric.utilities.data import _set_sampler_epoch
    from torch.utils.data import DistributedSampler

    from pfkit.data._loader import ResumableLoader

    def loader(ddp):
        data = list(range(12))
        if ddp:
            return ResumableLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=2, rank=1))
        return ResumableLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(0))

    for ddp in (False, True):
        ref = loader(ddp)
        epochs = []
        for e in range(3):
            it = iter(ref)
            _set_sampler_epoch(ref, e)
            epochs.append([next(it).tolist()])  # one batch per epoch, as limit_train_batches=1 serves
        assert epochs[0] != epochs[1], ddp
        live = loader(ddp)
        _set_sampler_epoch(live, 0)
        it = iter(live)
        next(it)
        state = live.state_dict()
        assert state["served"] == 1 < len(live)
        resumed = loader(ddp)
        resumed.load_state_dict(state)
        it = iter(resumed)  # Lightning calls iter() in setup_data, then set_epoch for the next epoch
        _set_sampler_epoch(resumed, 1)
        assert [next(it).tolist()] == epochs[1], ddp
        it = iter(resumed)
        _set_sampler_epoch(resumed, 2)
        assert [next(it).tolist()] == epochs[2], ddp
