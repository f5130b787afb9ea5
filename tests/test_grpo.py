"""GRPO: the GRPO-specific math on hand-computed values, and the Lightning module on a tiny CPU policy."""

import pandas as pd
import pytest
import torch

from pfkit.data.prompts import PromptDataModule, verifier_prompt_set
from pfkit.modules.grpo import GRPOModule
from pfkit.rl import grpo
from pfkit.rl.advantages import group_relative
from pfkit.rl.losses import policy_loss
from pfkit.rollout import Rollout

# ------------------------------------------------------------------------------------------- pure math


def test_group_relative_hand_computed_and_zero_variance_group():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])   # group 1: mean .5, std (n-1) 0.5774
    adv = group_relative(r, 4)
    s = (1 / 3) ** 0.5
    assert adv[:4].tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s], rel=1e-4)
    assert adv[4:].tolist() == [0.0] * 4                          # identical rewards: no signal
    assert group_relative(r, 4, scale="none")[:4].tolist() == [0.5, -0.5, -0.5, 0.5]


def test_zero_variance_group_gives_no_policy_gradient_and_positive_adv_raises_logp():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.5], [0.5, 0.5], [0.5, 0.5]])).requires_grad_()
    adv = group_relative(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)   # group 0 informative, group 1 not
    mask = torch.ones(4, 2)
    loss, _ = policy_loss(logp, logp.detach(), adv, mask, clip_low=0.2, clip_high=0.28)
    loss.backward()
    g = logp.grad
    assert torch.all(g[2:] == 0)                                  # zero-variance group: exactly no gradient
    assert torch.all(g[0] < 0) and torch.all(g[1] > 0)            # descent raises row 0, lowers row 1
    # token-mean over 8 tokens, ratio 1: d loss / d logp = -A / 8
    assert g[0, 0].item() == pytest.approx(-adv[0].item() / 8)


def test_clip_higher_in_grpo_loss():
    """A positive-advantage token whose ratio went up 25% is clipped at 1.2 but not at 1.28."""
    old = torch.zeros(1, 1)
    new = torch.log(torch.tensor([[1.25]]))
    a = torch.tensor([1.0])
    m = torch.ones(1, 1)
    sym, st_sym = policy_loss(new, old, a, m, clip_low=0.2, clip_high=0.2)
    hi, st_hi = policy_loss(new, old, a, m, clip_low=0.2, clip_high=0.28)
    assert sym.item() == pytest.approx(-1.2) and st_sym["clip_frac"].item() == 1.0
    assert hi.item() == pytest.approx(-1.25) and st_hi["clip_frac"].item() == 0.0


def one_row(prompt, response, logprobs):
    """A one-row Rollout with exactly these prompt / response tokens (no padding)."""
    p, r = torch.tensor([prompt]), torch.tensor([response])
    return Rollout(sequences=torch.cat([p, r], 1), attention_mask=torch.ones(1, p.shape[1] + r.shape[1]).long(),
                   prompt_len=p.shape[1], response_ids=r, response_mask=torch.ones_like(r),
                   logprobs=torch.tensor([logprobs]), texts=[""], pad_id=0)


def test_collate_left_pads_prompts_right_pads_responses():
    ro = Rollout.cat([one_row([5, 6, 7], [8], [-0.5]), one_row([9], [10, 11], [-1.0, -2.0])])
    d = {"sequences": ro.sequences, "attention_mask": ro.attention_mask, "response_mask": ro.response_mask,
         "old_logprobs": ro.logprobs}
    assert d["sequences"].tolist() == [[5, 6, 7, 8, 0], [0, 0, 9, 10, 11]]
    assert d["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert d["response_mask"].tolist() == [[1, 0], [1, 1]]
    assert d["old_logprobs"].tolist() == [[-0.5, 0.0], [-1.0, -2.0]]


# ----------------------------------------------------------------------------------------- tiny module

PROMPTS = [f"count {i}:" for i in range(12)]


def digit_share(prompt, completion):
    """Continuous reward in [0, 1]: share of digits among the first 8 characters (0 if empty)."""
    c = completion[:8]
    return sum(ch.isdigit() for ch in c) / 8 if c else 0.0


@pytest.fixture(scope="module")
def tiny_policy():
    from pfkit.models import build_policy, train_tokenizer

    torch.manual_seed(0)
    tok = train_tokenizer(PROMPTS * 5 + ["0123456789 abcdef " * 5], vocab_size=300)
    model = build_policy(tok, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    return model, tok


def make_module(tiny_policy, sampler="vade", **kw):
    model, tok = tiny_policy
    import copy

    m = GRPOModule(policy=None, sampler=sampler, prompts_per_step=4, group_size=4, max_new_tokens=8, lr=1e-2,
                   **kw)
    m.set_policy(copy.deepcopy(model), tok)
    return m


def test_shared_prefix_logprobs_match_full_sequences(tiny_policy):
    from pfkit.rollout import generate, sequence_logprobs, shared_prefix_logprobs

    model, tok = tiny_policy
    ro = generate(model, tok, [PROMPTS[0], "count 11: and a longer prompt", PROMPTS[3]], group_size=3, max_new_tokens=8,
                  seed=0)
    # the groups as the GRPO module holds them (each trimmed to its own lengths), concatenated again
    d = Rollout.cat(ro.groups(3))
    T = d.response_len
    full = sequence_logprobs(model, d.sequences, d.attention_mask, T)
    rows = torch.tensor([7, 1, 8, 4])                      # any subset/order of rows
    assert d.prompt_index[rows].tolist() == [2, 0, 2, 1]
    got = shared_prefix_logprobs(model, d.sequences[rows], d.attention_mask[rows], T, d.prompt_index[rows])
    assert torch.allclose(got, full[rows], atol=1e-5)
    assert torch.allclose(full * d.response_mask, d.logprobs, atol=1e-4)
    # the rollout's own scoring method (what the GRPO step calls) is the same two functions
    assert torch.allclose(d.logprobs_under(model, rows), full[rows], atol=1e-6)
    assert torch.allclose(d.logprobs_under(model, rows, shared_prefix=True), got, atol=1e-6)
    assert torch.allclose(d.logprobs_under(model), full, atol=1e-6)


def pure_step(m, opt):
    """One GRPO step without a Trainer: the pure function, with the module's pieces."""
    return grpo.step(m.model, opt, m.sampler, m.rollout, m.config, generator=m.gen).stats


def test_one_grpo_step_changes_the_policy(tiny_policy):
    m = make_module(tiny_policy)
    m.attach(verifier_prompt_set(PROMPTS, digit_share))
    opt = m.configure_optimizers()
    before = [p.detach().clone() for p in m.model.parameters()]
    stats = pure_step(m, opt)
    assert stats["rollouts_step"] == 16 and stats["rollouts_spent"] == 16
    assert stats["effective_samples"] > 0 and stats["loss"] != 0.0
    changed = [not torch.equal(a, b) for a, b in zip(before, m.model.parameters())]
    assert sum(changed) >= len(changed) - 1      # (the position table rows past the sequence stay)


def test_all_zero_variance_step_leaves_policy_unchanged(tiny_policy):
    m = make_module(tiny_policy, sampler="uniform")
    m.attach(verifier_prompt_set(PROMPTS, lambda p, c: 0.0))
    opt = m.configure_optimizers()
    pure_step(m, opt)  # momentum exists only after a real step; make one first with a useful reward
    m.prompt_set = verifier_prompt_set(PROMPTS, digit_share)
    pure_step(m, opt)
    m.prompt_set = verifier_prompt_set(PROMPTS, lambda p, c: 1.0)
    before = [p.detach().clone() for p in m.model.parameters()]
    stats = pure_step(m, opt)
    assert stats["frac_zero_var"] == 1.0 and stats["effective_samples"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, m.model.parameters()))


def test_kl_step_returns_the_reference_logprobs_it_used_and_the_table_logs_them(tiny_policy, tmp_path):
    """With kl_coef > 0 the step hands back the reference's per-token log-probs its KL term used (equal to an
    independent teacher-forced pass of the reference over each group), and the rollout table logs those
    without running the reference again."""
    from types import SimpleNamespace

    from pfkit.rollout import sequence_logprobs
    from pfkit.runs import RunDir

    m = make_module(tiny_policy, sampler="uniform", kl_coef=0.1)
    m.attach(verifier_prompt_set(PROMPTS, digit_share))
    with torch.no_grad():  # a reference that differs from the policy
        for q in m.ref_model.parameters():
            q.add_(torch.randn(q.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    res = grpo.step(m.model, m.configure_optimizers(), m.sampler, m.rollout, m.config, ref_policy=m.ref_model,
                    generator=m.gen)
    assert res.ref_logprobs is not None and len(res.ref_logprobs) == len(res.batch.payload) == 4
    for group, ref in zip(res.batch.payload, res.ref_logprobs):
        with torch.no_grad():
            want = sequence_logprobs(m.ref_model, group.sequences, group.attention_mask, group.response_len)
        assert ref.shape == (4, group.response_len)
        assert torch.allclose(ref * group.response_mask, want, atol=1e-5)
    m._last_batch, m._last_adv, m._last_ref = res.batch, res.advantages, res.ref_logprobs
    m._trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    calls = []
    hook = m.ref_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        m._write_tables(0)
    finally:
        hook.remove()
    assert calls == []  # the table reused the step's reference log-probs
    ro = RunDir(tmp_path).read("rollouts")
    g0 = res.batch.payload[0]
    on = g0.response_mask[0].bool()
    assert ro.ref_token_logprobs.iloc[0] == pytest.approx(res.ref_logprobs[0][0][on].tolist())
    # no KL term: nothing to hand back
    m2 = make_module(tiny_policy, sampler="uniform")
    m2.attach(verifier_prompt_set(PROMPTS, digit_share))
    assert grpo.step(m2.model, m2.configure_optimizers(), m2.sampler, m2.rollout, m2.config,
                     generator=m2.gen).ref_logprobs is None


def test_bad_config_is_reported(tiny_policy):
    m = make_module(tiny_policy)
    with pytest.raises(ValueError, match="prompts_per_step"):
        m.attach(verifier_prompt_set(PROMPTS[:3], digit_share))
    with pytest.raises(ValueError, match="outside"):
        verifier_prompt_set(["a"], lambda p, c: 2.0).score([0], ["x"])


@pytest.mark.slow
def test_fit_writes_tables_and_resumes_sampler_state(tiny_policy, tmp_path):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from pfkit.runs import RunDir

    def fit(module, steps, ckpt=None, run=tmp_path):
        dm = PromptDataModule.from_sets(verifier_prompt_set(PROMPTS, digit_share), verifier_prompt_set(
            PROMPTS[:4], digit_share), steps_per_epoch=steps)
        tr = pl.Trainer(max_steps=steps, logger=CSVLogger(run, name="", version=""),
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=run, enable_checkpointing=False, log_every_n_steps=1)
        tr.fit(module, datamodule=dm, ckpt_path=ckpt)
        return tr

    m = make_module(tiny_policy, sampler="vade")
    tr = fit(m, 3)
    run = RunDir(tmp_path)
    diff = run.read("difficulty")
    assert list(diff.columns[:9]) == ["step", "prompt_id", "alpha", "beta", "p_mean", "selected", "successes",
                                      "trials", "sampler"]  # the run-folder contract's columns first
    assert list(diff.columns[9:]) == ["draw"]  # then the sampler's Thompson draw (the difficulty inspector's)
    assert len(diff) == 3 * 12 and diff.groupby("step")["selected"].sum().tolist() == [4, 4, 4]
    ro = run.read("rollouts")
    assert {"step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score", "kept",
            "advantage"} <= set(ro.columns)
    assert len(ro) == 3 * 16
    met = pd.read_csv(tmp_path / "metrics.csv")
    assert {"train/reward_mean", "train/frac_zero_var", "train/effective_samples",
            "train/rollouts_spent"} <= set(met.columns)
    assert met["train/rollouts_spent"].dropna().tolist() == [16.0, 32.0, 48.0]
    assert "val/pass_rate" in met.columns

    ckpt = tmp_path / "last.ckpt"
    tr.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=False)
    assert torch.equal(raw["grpo_sampler"]["tracker"]["alpha"], m.sampler.tracker.alpha)
    expected = m.sampler.tracker.select(4).tolist()
    # a fresh module resumed from the checkpoint restores alpha/beta/RNG before its first step
    m2 = make_module(tiny_policy, sampler="vade")
    m2.attach(verifier_prompt_set(PROMPTS, digit_share))
    m2.on_load_checkpoint(raw)
    assert torch.equal(m2.sampler.tracker.alpha, m.sampler.tracker.alpha)
    assert m2.sampler.tracker.select(4).tolist() == expected
    assert m2.sampler.rollouts_spent == 48
    # and through Lightning's own resume path
    m3 = make_module(tiny_policy, sampler="vade")
    fit(m3, 4, ckpt=str(ckpt), run=tmp_path / "resumed")
    assert m3.sampler.rollouts_spent == 48 + 16


@pytest.mark.slow
def test_cli_config_runs_on_the_code_task(tmp_path):
    """configs/grpo_codegen.yaml through `pfkit fit` (tiny saved policy, sandbox reward, 2 steps)."""
    from pathlib import Path

    from pfkit.cli import main
    from pfkit.models import build_policy, train_tokenizer
    from pfkit.runs import RunDir
    from pfkit.tasks import codegen

    probs = codegen.generate(20, seed=1)
    tok = train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=400)
    torch.manual_seed(0)
    build_policy(tok, n_layer=1, n_embd=32, n_head=2, n_positions=512).save_pretrained(tmp_path / "pol")
    tok.save_pretrained(tmp_path / "pol")
    cfg = Path(__file__).resolve().parents[1] / "configs" / "grpo_codegen.yaml"
    run = tmp_path / "run"
    rc = main(["fit", "-c", str(cfg), "--run_dir", str(run), "--model.init_args.policy", str(tmp_path / "pol"),
               "--model.init_args.prompts_per_step", "2", "--model.init_args.group_size", "2",
               "--model.init_args.max_new_tokens", "8", "--data.init_args.n_train", "6",
               "--data.init_args.n_val", "2", "--data.init_args.steps_per_epoch", "2", "--trainer.max_steps", "2"])
    assert rc in (0, None)
    d = RunDir(run).read("difficulty")
    assert len(d) == 2 * 6 and set(d["sampler"]) == {"vade"}
    assert len(RunDir(run).read("rollouts")) == 2 * 2 * 2
    ck = torch.load(next((run / "checkpoints").glob("last*.ckpt")), weights_only=False)
    assert ck["grpo_sampler"]["tracker"]["step_count"] == 2


def test_demo_rejects_bad_arguments_with_one_line_errors(capsys):
    from pfkit.cli import main

    assert main(["demo", "vade", "--samplers", "uniform,foo"]) == 2
    assert "unknown sampler(s) foo" in capsys.readouterr().err
    assert main(["demo", "vade", "--budget", "0"]) == 2


def test_jsonl_prompt_set_with_dotted_verifier(tmp_path):
    import json

    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"id": f"q{i}", "prompt": f"say {i}"}) for i in range(5)))
    dm = PromptDataModule(task="jsonl", prompts_file=str(f), verifier="operator:eq", n_train=10, n_val=1)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and dm.val_set.ids == ["q4"]
    i = dm.train_set.ids.index("q2")
    assert dm.train_set.score([i, i], ["say 2", "nope"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="module:function"):
        PromptDataModule(task="jsonl", prompts_file=str(f), verifier="nocolon").setup()
    with pytest.raises(ValueError, match="not found"):
        PromptDataModule(task="jsonl", prompts_file=str(tmp_path / "missing.jsonl"), verifier="operator:eq").setup()
    with pytest.raises(ValueError, match="needs prompts_file"):
        PromptDataModule(task="jsonl")
