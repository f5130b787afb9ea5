"""PF-PPO as a LightningModule: PPO that trains only on the responses a filtration strategy keeps.

One training batch of ``P`` prompts is one PF-PPO iteration, :mod:`pfkit.rl.ppo` (``make_experience``:
sample N responses per prompt, unit-test score, RM reward, filter per prompt, GAE on the kept samples;
``update``: PPO epochs over the kept buffer). This module wires it to Lightning: the policy, frozen
reference, reward model and critic (initialised from the RM), the AdamW optimizer (Adam betas (0.9,
0.95)), ``manual_backward``, logging (metrics.csv; every sample to ``RUN_DIR/rollouts.parquet``: step,
prompt_id, sample_idx, prompt, response, reward, score, kept, advantage, strategy, then the sandbox
verdict's fields), validation pass@1, checkpoints (the filter RNG of every rank) and the saved policy.

``strategy: none`` is PPO-M, ``br``/``bw`` are PF-PPO's best-random / best-worst, ``bon`` best-of-N.

FSDP (``ModelParallelStrategy``, configs/gpu/pfppo_fsdp.yaml): policy and critic are sharded in
``configure_model`` (reference and reward model stay replicated), sampling runs inside
``pfkit.distributed.gathered_params``, and the policy is gathered to rank 0 to be saved.

Paper vs official code (research/pfppo.md §5): the paper's form is implemented; the code's forms are options.
- ``strategy: br`` / ``bw`` are the authors' *filter* version (best + one uniformly random other / best +
  worst, per prompt); ``paper-br`` / ``paper-bw`` draw twice from the paper's weight vector instead.
- The authors' *reweight* version resamples micro-batches with replacement from the whole buffer using
  weights and whitens advantages before filtering; the verl port picks max/min over the whole batch, not
  per prompt (so it is not BR/BW). Neither is reproduced here.
- Ties: stable rank order (first maximum is "best", last minimum is "worst"), see ``pfkit.rl.filtration``.

Run length: one training batch = one PPO iteration, so set ``trainer.max_epochs`` /
``trainer.limit_train_batches`` (``max_steps`` counts optimiser updates).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from lightning.pytorch import LightningModule

from pfkit import distributed as dist
from pfkit.models import ScalarHeadModel, policy_fingerprint
from pfkit.rl import ppo
from pfkit.rl.filtration import r_squared, resolve
from pfkit.rollout import sample_and_check
from pfkit.runs import run_dir_of
from pfkit.tasks import CodeProblem


@torch.no_grad()
def evaluate_pass_at_1(model, tokenizer, problems: Sequence[CodeProblem], *, samples: int = 1,
                       temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 96, seed: int = 0,
                       timeout: float = 3.0, batch_prompts: int = 64) -> float:
    """pass@1 on ``problems``: greedy by default (the paper's protocol); with ``temperature > 0`` the mean
    success rate over ``samples`` sampled completions per problem."""
    n = 1 if temperature == 0 else samples
    table = sample_and_check(model, tokenizer, problems, n, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, seed=seed, batch_prompts=batch_prompts, timeout=timeout)
    return float(table["score"].sum()) / max(1, len(problems) * n)


def check_reward_source(source: str, profile: str, sigma: float) -> None:
    """One clear error for a reward source the PPO step does not know (before any model is loaded)."""
    from pfkit.rl.oracle import PROFILES

    if source not in ("model", "oracle"):
        raise ValueError(f"reward_source must be 'model' (the reward model) or 'oracle' (unit-test score + "
                         f"controlled noise), got {source!r}")
    if source == "oracle" and profile not in PROFILES:
        raise ValueError(f"oracle_profile {profile!r} is not one of {', '.join(PROFILES)}")
    if sigma < 0:
        raise ValueError(f"oracle_sigma must be >= 0, got {sigma}")


class PFPPOModule(LightningModule):
    """PPO with policy filtration on code problems (batches of ``CodeProblem`` from ``CodePromptDataModule``).

    ``prompts_per_step`` prompts (the global batch, split over DDP ranks) x ``group_size`` responses each
    make one iteration; the datamodule batches its problems by this module's ``prompts_per_step``.

    ``policy`` / ``reward_model``: local checkpoint folders or ``"embedded"`` (pfkit/assets/policy, pfkit/assets/reward).
    ``strategy``: none (PPO-M) | bon | br | bw; PPO-S is ``group_size: 1`` with ``strategy: none``.
    ``reward_source``: ``model`` (the reward model) or ``oracle`` (:mod:`pfkit.rl.oracle`, the mechanism
    experiment: unit-test score + noise whose scale depends on the reward region, ``oracle_profile`` and
    ``oracle_sigma``; the reward model then only initialises the critic). The defaults are the authors' PPO settings (KL 0.01, gamma 1,
    lambda 0.95, clip 0.2, value clip 0.2, temperature 1.0, top-p 0.9, Adam betas (0.9, 0.95), grad-norm 1.0)
    with learning rates sized for the tiny embedded policy.
    """

    def __init__(self, policy: str = "embedded", reward_model: str = "embedded", strategy: str = "br",
                 prompts_per_step: int = 8, group_size: int = 5, max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 0.9,
                 kl_coef: float = 0.01, gamma: float = 1.0, lam: float = 0.95, clip_low: float = 0.2,
                 clip_high: float = 0.2, value_clip: float | None = 0.2, ratio_level: str = "token",
                 agg: str = "token-mean", ppo_epochs: int = 2, minibatch_size: int = 16, actor_lr: float = 2e-5,
                 critic_lr: float = 1e-4, vf_coef: float = 1.0, entropy_coef: float = 0.0,
                 whiten_advantages: bool = True, reward_clip: float = 10.0, max_grad_norm: float = 1.0,
                 seed: int = 0, sandbox_timeout: float = 3.0, log_rollouts: bool = True, save_policy: bool = True,
                 reward_source: str = "model", oracle_profile: str = "noisy_middle", oracle_sigma: float = 0.3):
        super().__init__()
        self.save_hyperparameters()
        resolve(strategy)  # fail early on an unknown strategy
        check_reward_source(reward_source, oracle_profile, oracle_sigma)
        from pfkit import models

        model, tokenizer = models.load_policy(policy)
        rm = ScalarHeadModel.load(reward_model)
        self._init_models(model, tokenizer, rm)

    @classmethod
    def from_models(cls, policy_model, tokenizer, reward_model: ScalarHeadModel, **hparams) -> PFPPOModule:
        """Build around in-memory models (demo, tests); ``hparams`` as in ``__init__``."""
        self = cls.__new__(cls)
        LightningModule.__init__(self)
        import inspect

        defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()
                    if v.default is not inspect.Parameter.empty}
        unknown = set(hparams) - set(defaults)
        if unknown:
            raise TypeError(f"unknown PF-PPO option(s): {sorted(unknown)}")
        self.save_hyperparameters({**defaults, "policy": "<in memory>", "reward_model": "<in memory>", **hparams})
        resolve(self.hparams.strategy)
        check_reward_source(self.hparams.reward_source, self.hparams.oracle_profile, self.hparams.oracle_sigma)
        self._init_models(policy_model, tokenizer, reward_model)
        return self

    def _init_models(self, model, tokenizer, rm: ScalarHeadModel) -> None:
        self.automatic_optimization = False
        self.policy = model
        self.tokenizer = tokenizer
        fp = rm.meta.get("policy_fingerprint")
        if fp and fp != policy_fingerprint(model):
            warnings.warn("the reward model was trained from a different policy checkpoint than this one "
                          "(its backbone still works, but the critic/RM may be poorly matched)", stacklevel=3)
        self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.reward_model = rm.eval().requires_grad_(False)
        self.critic = rm.as_critic().requires_grad_(True)
        self.rl_step = 0
        self._filter_gen = torch.Generator().manual_seed(self.hparams.seed)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        h = self.hparams
        return torch.optim.AdamW([{"params": self.policy.parameters(), "lr": h.actor_lr},
                                  {"params": self.critic.parameters(), "lr": h.critic_lr}],
                                 betas=(0.9, 0.95), weight_decay=0.0)

    def configure_model(self) -> None:
        # FSDP (ModelParallelStrategy): shard the trained models; the frozen reference and RM stay replicated
        if self.device_mesh is not None:
            dist.fully_shard_models(self.policy, self.critic, mesh=self.device_mesh)

    def setup(self, stage: str | None = None) -> None:
        # DDP: each rank filters and shuffles its own prompts with its own stream (rank 0 = single process)
        if not getattr(self, "_rank_seeded", False):
            self._rank_seeded = dist.seed_rank_stream(self._filter_gen, self.hparams.seed)

    def on_save_checkpoint(self, checkpoint):
        checkpoint["pfppo"] = {"rl_step": self.rl_step, "filter_gen": self._filter_gen.get_state(),
                               "filter_gen_ranks": dist.all_gather_object(self._filter_gen.get_state())}

    def on_load_checkpoint(self, checkpoint):
        st = checkpoint.get("pfppo", {})
        self.rl_step = st.get("rl_step", 0)
        ranks = st.get("filter_gen_ranks")
        if ranks is not None and len(ranks) == dist.world_size():
            self._filter_gen.set_state(ranks[dist.rank()])
            self._rank_seeded = True
        elif "filter_gen" in st:
            self._filter_gen.set_state(st["filter_gen"])

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Batches are lists of (frozen dataclass) problems, not tensors: nothing to move."""
        return batch

    # ------------------------------------------------------------------ one PPO iteration
    @property
    def config(self) -> ppo.PPOConfig:
        return ppo.PPOConfig.from_dict(self.hparams)

    def make_experience(self, problems: Sequence[CodeProblem]) -> ppo.Experience:
        """Steps 1-4 of :mod:`pfkit.rl.ppo` with this module's models (each rank its own sampling seed)."""
        seed = (self.hparams.seed * 1_000_003 + self.rl_step) * dist.world_size() + dist.rank()
        return ppo.make_experience(self.policy, self.tokenizer, self.ref, self.reward_model, self.critic, problems,
                                   self.config, seed=seed, generator=self._filter_gen, device=self.device)

    def training_step(self, batch, batch_idx):
        exp = self.make_experience(batch)
        upd = {}
        if dist.all_reduce(int(exp.keep.sum())):
            upd = ppo.update(self.policy, self.critic, self.optimizers(), exp, self.config,
                             generator=self._filter_gen, backward=self.manual_backward)
        if dist.is_distributed():  # loss stats: mean over the ranks that have them (a rank may have none)
            ranks = dist.all_gather_object(upd)
            upd = {k: float(np.mean([u[k] for u in ranks if k in u])) for k in sorted(set().union(*ranks))}
        # metrics (R², pass rates, kept fraction) over every rank's samples, not one rank's share
        keep, reward, score = (dist.gather_cat(t.cpu()) for t in (exp.keep, exp.reward, exp.score))
        metrics = {
            "rl_step": float(self.rl_step),
            "reward": reward.mean().item(),
            "reward_kept": reward[keep].mean().item(),
            "pass_rate": score.mean().item(),
            "pass_rate_kept": score[keep].mean().item(),
            "kept_fraction": keep.float().mean().item(),
            "r2_all": r_squared(reward, score),
            "r2_kept": r_squared(reward[keep], score[keep]),
            "kl": float(dist.gather_cat(exp.kl.cpu()).mean()) if len(keep) and keep.any() else 0.0,
            "response_len": dist.gather_cat(exp.response_len.cpu()).mean().item(),
            **upd,
        }
        self.log_dict({f"train/{k}": (v if not math.isnan(v) else float("nan")) for k, v in metrics.items()},
                      on_step=True, on_epoch=False, batch_size=len(batch))  # already over all ranks
        self.last_metrics = metrics
        if self.hparams.log_rollouts and self._trainer is not None:
            self.log_rollouts(exp)
        self.rl_step += 1

    def rollout_rows(self, exp: ppo.Experience) -> list[dict]:
        """rollouts.parquet rows: the contract's columns, then the sandbox verdict's fields."""
        t = exp.samples
        extra = [c for c in t.columns if c not in ("prompt_id", "sample_idx", "prompt", "response", "score")]
        return [{"step": self.rl_step, "prompt_id": r["prompt_id"], "sample_idx": int(r["sample_idx"]),
                 "prompt": r["prompt"], "response": r["response"], "reward": float(exp.reward[i]),
                 "score": float(exp.score[i]), "kept": bool(exp.keep[i]),
                 "advantage": float(exp.advantage_per_sample[i]), "strategy": str(self.hparams.strategy),
                 **{c: r[c] for c in extra}}
                for i, r in enumerate(t.to_dict("records"))]

    def log_rollouts(self, exp: ppo.Experience) -> None:
        # every rank writes its own prompts' rows (one part file per step and rank)
        run_dir_of(self.trainer).append("rollouts", self.rollout_rows(exp), step=self.rl_step, rank=self.global_rank)

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch, batch_idx):
        h = self.hparams
        with dist.gathered_params(self.policy):
            acc = evaluate_pass_at_1(self.policy, self.tokenizer, batch, max_new_tokens=h.max_new_tokens,
                                     timeout=h.sandbox_timeout)
        self.log("val/pass@1", acc, batch_size=len(batch), prog_bar=True, sync_dist=dist.is_distributed())

    def on_fit_end(self):
        if self.hparams.save_policy:
            out = run_dir_of(self.trainer).path / "policy"  # collective under DDP: every rank calls it
            state = dist.full_state_dict(self.policy)  # FSDP: gathered to rank 0 (collective: every rank)
            if self.trainer.is_global_zero:
                from pfkit.models import save_policy

                save_policy(self.policy, self.tokenizer, out, state_dict=state, started_from=str(self.hparams.policy),
                            reward_model=str(self.hparams.reward_model),
                            recipe={"module": type(self).__name__, **self.hparams})
