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
