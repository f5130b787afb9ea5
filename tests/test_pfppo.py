"""PF-PPO module: one tiny end-to-end step on CPU (sampling, sandbox, RM, filtration, GAE, PPO update, parquet)."""

import math

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import CSVLogger

from pfkit import models
from pfkit.data.preference import CodePromptDataModule
from pfkit.models import ScalarHeadModel
from pfkit.modules.pfppo import PFPPOModule
from pfkit.runs import RunDir
from pfkit.tasks import codegen

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    probs = codegen.generate(40, seed=5)
    tok = models.train_tokenizer([p.prompt + p.reference for p in probs], vocab_size=300)
    torch.manual_seed(0)
    policy = models.build_policy(tok, n_layer=2, n_embd=48, n_head=2, n_positions=512)
    return probs, tok, policy


@pytest.mark.parametrize("strategy, kept_per_prompt", [("br", 2)])
def test_one_pfppo_step_updates_policy_and_logs(tiny, tmp_path, strategy, kept_per_prompt):
    probs, tok, policy = tiny
    policy = __import__("copy").deepcopy(policy)
    rm = ScalarHeadModel.from_policy(policy)
    module = PFPPOModule.from_models(policy, tok, rm, strategy=strategy, prompts_per_step=4, group_size=3,
                                     max_new_tokens=12, minibatch_size=4, ppo_epochs=1, actor_lr=1e-3, critic_lr=1e-3,
                                     save_policy=False)
    before = [p.detach().clone() for p in module.policy.parameters()]
    critic_before = [p.detach().clone() for p in module.critic.parameters()]
    dm = CodePromptDataModule(n_train=8, n_val=4)
    dm.setup()
    dm.problems["train"] = probs[:8]
    run = tmp_path / "run"
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, log_every_n_steps=1,
                      logger=CSVLogger(run, name="", version=""),
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=run)
    trainer.fit(module, datamodule=dm)

    changed = any(not torch.equal(a, b) for a, b in zip(before, module.policy.parameters()))
    assert changed, "the policy did not change"
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, module.critic.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, module.ref.parameters())), "reference must stay frozen"

    df = RunDir(run).read("rollouts")
    assert list(df.columns[:9]) == ["step", "prompt_id", "sample_idx", "prompt", "response", "reward", "score",
                                    "kept", "advantage"]
    assert len(df) == 4 * 3 and (df.step == 0).all()
    assert df.groupby("prompt_id").kept.sum().tolist() == [kept_per_prompt] * 4
    # the best-rewarded sample of each prompt is always kept; dropped ones have NaN advantage
    best = df.loc[df.groupby("prompt_id").reward.idxmax()]
    assert best.kept.all()
    assert df.loc[~df.kept, "advantage"].isna().all()
    assert set(df.score.unique()) <= {0.0, 1.0}
    # the sandbox's reward-hack flag and isolation reach the table (the filtration inspector filters on it)
    assert {"hack", "isolation", "mode"} <= set(df.columns) and df.hack.map(type).eq(str).all()
    # per-token columns: one log-prob per token; the reference's for kept rows (= the policy's at step 0)
    for r in df.itertuples():
        assert len(r.tokens) == len(r.token_logprobs) and all(lp <= 0 for lp in r.token_logprobs)
        if r.kept:
            assert np.allclose(r.ref_token_logprobs, r.token_logprobs, atol=1e-4)
        else:
            assert len(r.ref_token_logprobs) == 0
    m = RunDir(run).metrics()
    for col in ("train/reward", "train/pass_rate", "train/kept_fraction", "train/r2_kept", "train/r2_all",
                "train/kl", "train/clip_frac"):
        assert col in m.columns, col
    assert m["train/kept_fraction"].dropna().iloc[0] == pytest.approx(kept_per_prompt / 3)
    assert math.isclose(m["train/reward"].dropna().iloc[0], df.reward.mean(), rel_tol=1e-5)


def test_experience_rewards_and_advantages(tiny):
    """RM score lands on the last kept token, minus beta * k1 on every token; whitened over the kept buffer."""
    probs, tok, policy = tiny
    module = PFPPOModule.from_models(__import__("copy").deepcopy(policy), tok,
                                     ScalarHeadModel.from_policy(policy), strategy="bw", group_size=4,
                                     max_new_tokens=10, kl_coef=0.5, lam=1.0)
    exp = module.make_experience(probs[:3])
    assert exp.keep.view(3, 4).sum(1).tolist() == [2, 2, 2]
    m = exp.mask
    # policy == reference at the start, so KL is ~0; with gamma = lambda = 1 the return at the first token
    # is the Monte Carlo return, i.e. the RM reward
    assert exp.kl.abs().max() < 1e-3
    kept_reward = exp.reward[exp.keep]
    has = m.sum(-1) > 0
    torch.testing.assert_close(exp.returns[has, 0], kept_reward[has], atol=2e-3, rtol=0)
    adv = exp.advantages[m.bool()]
    assert abs(adv.mean().item()) < 1e-4 and adv.std().item() == pytest.approx(1.0, abs=1e-3)
    assert np.isnan(exp.advantage_per_sample[~exp.keep].numpy()).all()
    module.hparams.strategy = "none"  # PPO-M keeps everything
    assert module.make_experience(probs[:2]).keep.all()


def test_unknown_strategy_fails_early(tiny):
    probs, tok, policy = tiny
    with pytest.raises(ValueError, match="unknown filtration strategy"):
        PFPPOModule.from_models(policy, tok, ScalarHeadModel.from_policy(policy), strategy="best3")
    with pytest.raises(TypeError, match="unknown PF-PPO option"):
        PFPPOModule.from_models(policy, tok, ScalarHeadModel.from_policy(policy), n_sample=3)


def _oracle_module(tiny, **kw):
    probs, tok, policy = tiny
    return PFPPOModule.from_models(__import__("copy").deepcopy(policy), tok, ScalarHeadModel.from_policy(policy),
                                   **{"strategy": "bw", "group_size": 4, "max_new_tokens": 10, **kw})


def test_oracle_reward_source_is_the_tests_plus_noise(tiny):
    probs = tiny[0]
    exact = _oracle_module(tiny, reward_source="oracle", oracle_profile="exact", strategy="none")
    exp = exact.make_experience(probs[:6])
    # exact oracle: clean reward (s + u)/2 rescaled to [-1, 1]: every pass >= 0 > every fail
    assert ((exp.reward >= 0) == (exp.score == 1)).all() and exp.reward.abs().max() <= 1
    noisy = _oracle_module(tiny, reward_source="oracle", oracle_profile="uniform", oracle_sigma=5.0)
    r = noisy.make_experience(probs[:6]).reward
    assert r.std() > 2  # sigma 5 on the [0, 1] clean scale, times 2 after rescaling
    with pytest.raises(ValueError, match="reward_source must be"):
        _oracle_module(tiny, reward_source="rm")
    with pytest.raises(ValueError, match="oracle_profile 'middle' is not one of"):
        _oracle_module(tiny, reward_source="oracle", oracle_profile="middle")


def test_ppo_s_is_one_response_per_prompt(tiny):
    exp = _oracle_module(tiny, group_size=1, strategy="none").make_experience(tiny[0][:5])
    assert len(exp.samples) == 5 and exp.keep.all() and exp.samples["sample_idx"].eq(0).all()


def test_kept_rows_are_one_trajectory_and_values_align(tiny):
    """After filtering, each kept row's tokens, log-probs, values and advantages belong to the same sample
    (verl #7956 is this bug elsewhere); V_t is the critic at the state before response token t; with
    lambda < 1 the returns are GAE's, recomputed here by hand from the logged values and rewards."""
    from pfkit.rollout import sequence_logprobs

    module = _oracle_module(tiny, strategy="bw", kl_coef=0.0, lam=0.5, gamma=1.0, whiten_advantages=False)
    exp = module.make_experience(tiny[0][:6])
    idx = exp.keep.nonzero().squeeze(1)
    kept = exp.kept
    T, Pl = kept.response_len, kept.prompt_len
    tok = module.tokenizer
    for row, i in enumerate(idx.tolist()):
        ids = kept.response_ids[row][kept.response_mask[row].bool()]
        assert exp.samples["response"].iloc[i].strip() in tok.decode(ids, skip_special_tokens=True).strip() or ids.numel() == 0
    # log-probs: the kept rows' sampling log-probs equal a teacher-forced pass over the kept sequences
    lp = sequence_logprobs(module.policy, kept.sequences, kept.attention_mask, T) * exp.mask
    torch.testing.assert_close(lp, exp.old_logprobs, atol=1e-4, rtol=0)
    # values: position Pl-1+t of the full sequence = the critic on the prefix that ends just before token t
    row = int(exp.mask.sum(-1).argmax())
    for t in range(int(exp.mask[row].sum())):
        prefix = kept.sequences[row:row + 1, :Pl + t]
        v = module.critic(prefix, kept.attention_mask[row:row + 1, :Pl + t])[0, -1]
        assert v.item() == pytest.approx(exp.values[row, t].item(), abs=1e-4)
    # GAE by hand: reward only at the last kept token (kl_coef 0), V = 0 past the end
    for row in range(len(idx)):
        n = int(exp.mask[row].sum())
        if n == 0:
            continue
        v = exp.values[row, :n].tolist() + [0.0]
        r = [0.0] * n
        r[-1] = float(exp.reward[idx[row]])
        adv, a = [0.0] * n, 0.0
        for t in reversed(range(n)):
            a = r[t] + v[t + 1] - v[t] + 0.5 * a
            adv[t] = a
        assert exp.advantages[row, :n].tolist() == pytest.approx(adv, abs=1e-5)
        assert exp.returns[row, :n].tolist() == pytest.approx([x + y for x, y in zip(adv, v)], abs=1e-5)


def test_first_ppo_minibatch_has_ratio_one_and_no_clipping(tiny):
    from pfkit.rl import ppo

    module = _oracle_module(tiny, strategy="none", minibatch_size=64, ppo_epochs=1)
    exp = module.make_experience(tiny[0][:4])
    opt = torch.optim.SGD(list(module.policy.parameters()) + list(module.critic.parameters()), lr=0.1)
    stats = ppo.update(module.policy, module.critic, opt, exp, module.config)  # one minibatch = the first
    assert stats["clip_frac"] == 0.0 and abs(stats["approx_kl"]) < 1e-6
