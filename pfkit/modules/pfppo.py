"""PF-PPO: PPO that trains only on the responses a filtration strategy keeps (Zhang/Shen et al. 2024).

One training batch of ``P`` prompts is one PPO iteration (the paper's Algorithm 2 with the authors'
"filter" implementation):

1. sample ``N`` responses per prompt from the current policy (temperature 1.0, top-p 0.9);
2. score every response with the reward model (normalised with the RM's fixed statistics, clamped to
   +-10) and, for logging and R² only, with the unit tests (``pfkit.sandbox.check_completions``);
3. filter **per prompt** by reward rank (``pfkit.rl.filtration.select``; ``strategy: none`` is PPO-M,
   ``br``/``bw`` are PF-PPO's best-random / best-worst, ``bon`` best-of-N);
4. on the kept samples only: per-token reward = RM score at the last token - ``kl_coef`` * k1 KL to the
   frozen SFT policy, values from a critic initialised from the reward model, GAE (gamma 1, lambda 0.95),
   advantages whitened over the kept buffer (the authors' reweight code whitens before filtering, so over
   dropped samples too; we follow the filter version and the paper's "dropped samples are not used");
5. ``ppo_epochs`` passes of shuffled minibatches with the clipped policy and value losses.

Dropped samples feed neither actor nor critic, so PF-PPO does ~2/5 of PPO-M's policy/critic work per
iteration at equal sampling and RM cost (paper Table 4). Every sample is logged to
``RUN_DIR/rollouts.parquet`` (step, prompt_id, sample_idx, prompt, response, reward, score, kept,
advantage) and the step's metrics to metrics.csv.

FSDP (``ModelParallelStrategy``, configs/gpu/pfppo_fsdp.yaml): policy and critic are sharded in
``configure_model`` (reference and reward model stay replicated), sampling runs inside
``pfkit.distributed.gathered_params``, and the policy is gathered to rank 0 to be saved.

Paper vs official code (research/pfppo.md §5): the paper's form is implemented; the code's forms are options.
- ``strategy: br`` / ``bw`` are the authors' *filter* version (best + one uniformly random other / best +
  worst, per prompt); ``paper-br`` / ``paper-bw`` draw twice from the paper's weight vector instead.
- The authors' *reweight* version resamples micro-batches with replacement from the whole buffer using
  weights and whitens advantages before filtering; the verl port picks max/min over the whole batch, not
  per prompt (so it is not BR/BW). Neither is reproduced here.
- Ties: stable rank order (first maximum is "best", last minimum is "worst"), see ``pfkit.rl.filtration``. Run length: one training batch = one PPO iteration, so
set ``trainer.max_epochs`` / ``trainer.limit_train_batches`` (``max_steps`` counts optimiser updates).
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
from pfkit.modules.reward import ScalarHeadModel, policy_fingerprint
from pfkit.rl.advantages import gae, masked_mean
from pfkit.rl.filtration import r_squared, resolve, select
from pfkit.rl.losses import kl, policy_loss, value_loss
from pfkit.runs import run_dir_of
from pfkit.tasks import CodeProblem


@torch.no_grad()
def evaluate_pass_at_1(model, tokenizer, problems: Sequence[CodeProblem], *, samples: int = 1,
                       temperature: float = 0.0, top_p: float = 1.0, max_new_tokens: int = 96, seed: int = 0,
                       timeout: float = 3.0, batch_prompts: int = 64) -> float:
    """pass@1 on ``problems``: greedy by default (the paper's protocol); with ``temperature > 0`` the mean
    success rate over ``samples`` sampled completions per problem."""
    from pfkit.rollout import CODE_STOPS, generate
    from pfkit.sandbox import check_completions

    problems = list(problems)
    n = 1 if temperature == 0 else samples
    passed = 0
    for i in range(0, len(problems), batch_prompts):
        batch = problems[i:i + batch_prompts]
        out = generate(model, tokenizer, [p.prompt for p in batch], n=n, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, stop=CODE_STOPS, seed=seed + i)
        flat = [p for p in batch for _ in range(n)]
        passed += sum(v.passed for v in check_completions(flat, out.texts, timeout=timeout))
    return passed / max(1, len(problems) * n)


class PFPPOModule(LightningModule):
    """PPO with policy filtration on code problems (batches of ``CodeProblem`` from ``CodePromptDataModule``).

    ``policy`` / ``reward_model``: local checkpoint folders or ``"embedded"`` (data/policy, data/reward).
    ``strategy``: none (PPO-M) | bon | br | bw. The defaults are the authors' PPO settings (KL 0.01, gamma 1,
    lambda 0.95, clip 0.2, value clip 0.2, temperature 1.0, top-p 0.9, Adam betas (0.9, 0.95), grad-norm 1.0)
    with learning rates sized for the tiny embedded policy.
    """

    def __init__(self, policy: str = "embedded", reward_model: str = "embedded", strategy: str = "br",
                 n_samples: int = 5, max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 0.9,
                 kl_coef: float = 0.01, gamma: float = 1.0, lam: float = 0.95, clip_low: float = 0.2,
                 clip_high: float = 0.2, value_clip: float | None = 0.2, ratio_level: str = "token",
                 agg: str = "token-mean", ppo_epochs: int = 2, minibatch_size: int = 16, actor_lr: float = 2e-5,
                 critic_lr: float = 1e-4, vf_coef: float = 1.0, entropy_coef: float = 0.0,
                 whiten_advantages: bool = True, reward_clip: float = 10.0, max_grad_norm: float = 1.0,
                 seed: int = 0, sandbox_timeout: float = 3.0, log_rollouts: bool = True, save_policy: bool = True):
        super().__init__()
        self.save_hyperparameters()
        resolve(strategy)  # fail early on an unknown strategy
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
        if dist.rank() > 0 and not getattr(self, "_rank_seeded", False):
            self._filter_gen.manual_seed(self.hparams.seed + 1_000_003 * dist.rank())
            self._rank_seeded = True

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
    @torch.no_grad()
    def make_experience(self, problems: Sequence[CodeProblem]) -> dict:
        """Sample, score, filter and compute advantages; returns the kept buffer and everything to log."""
        from pfkit.rollout import CODE_STOPS, generate, sequence_logprobs
        from pfkit.sandbox import check_completions

        h = self.hparams
        problems = list(problems)
        P, N = len(problems), h.n_samples
        with dist.gathered_params(self.policy):  # FSDP: full weights for sampling (collective: all ranks)
            ro = generate(self.policy, self.tokenizer, [p.prompt for p in problems], n=N,
                          max_new_tokens=h.max_new_tokens, temperature=h.temperature, top_p=h.top_p,
                          stop=CODE_STOPS, seed=(h.seed * 1_000_003 + self.rl_step) * dist.world_size() + dist.rank())
        flat = [p for p in problems for _ in range(N)]
        verdicts = check_completions(flat, ro.texts, timeout=h.sandbox_timeout)
        score = torch.tensor([float(v.passed) for v in verdicts])
        raw = self.reward_model.score_texts(self.tokenizer, [p.prompt for p in flat], ro.texts, normalize=False)
        reward = self.reward_model.normalize(raw, clip=h.reward_clip)
        keep = select(reward.view(P, N), h.strategy, generator=self._filter_gen).view(-1)
        idx = keep.nonzero().squeeze(1)

        device = self.device
        T, Pl = ro.response_len, ro.prompt_len
        seqs, amask = ro.sequences[idx].to(device), ro.attention_mask[idx].to(device)
        rmask = ro.response_mask[idx].to(device).float()
        old_logp = ro.logprobs[idx].to(device).float() * rmask
        self.ref.eval()
        self.critic.eval()
        ref_logp = sequence_logprobs(self.ref, seqs, amask, T).float() * rmask
        values = self.critic(seqs, amask)[:, Pl - 1:Pl - 1 + T] * rmask
        kl_tok = kl(old_logp, ref_logp, "k1") * rmask
        tok_reward = -h.kl_coef * kl_tok
        has = rmask.sum(-1) > 0
        last = (rmask * torch.arange(T, device=device)).argmax(-1)
        rows = torch.arange(len(idx), device=device)[has]
        tok_reward[rows, last[has]] += reward[idx].to(device)[has]
        adv, ret = gae(tok_reward, values, rmask, h.gamma, h.lam)
        if h.whiten_advantages and dist.all_reduce(float(rmask.sum())) > 1:
            adv = dist.whiten(adv, rmask)  # over the kept buffer of all ranks (= whiten in one process)

        adv_per_sample = torch.full((P * N,), float("nan"))
        adv_per_sample[idx] = masked_mean(adv, rmask, dim=-1).cpu()
        return {"problems": flat, "texts": ro.texts, "reward": reward, "score": score, "keep": keep,
                "adv_per_sample": adv_per_sample, "idx": idx, "seqs": seqs, "amask": amask, "rmask": rmask,
                "old_logp": old_logp, "values": values, "adv": adv, "ret": ret, "kl": (kl_tok.sum(-1)),
                "T": T, "Pl": Pl, "P": P, "N": N, "resp_len": ro.response_mask.sum(-1).float()}

    def ppo_update(self, exp: dict) -> dict[str, float]:
        """``ppo_epochs`` passes of minibatches over the kept buffer; returns averaged loss statistics."""
        from pfkit.rollout import sequence_logprobs

        h = self.hparams
        K, T, Pl = len(exp["idx"]), exp["T"], exp["Pl"]
        opt = self.optimizers()
        self.policy.train()
        self.critic.train()
        stats: dict[str, list[float]] = {}
        # DDP all-reduces gradients in every backward: ranks must make the same number of them
        n_mb = dist.all_reduce(-(-K // h.minibatch_size), op="max")
        sharded = dist.is_sharded(self.policy)
        for _ in range(h.ppo_epochs):
            perm = torch.randperm(K, generator=self._filter_gen)
            chunks = list(perm.split(h.minibatch_size))
            for c in range(n_mb):
                mb = (chunks[c] if c < len(chunks) else perm[:0]).to(self.device)
                m = exp["rmask"][mb]
                if dist.all_reduce(float(m.sum())) == 0:  # nothing to learn on any rank
                    continue
                if m.sum() == 0:  # this rank has nothing: a zero-gradient pass keeps DDP in step
                    opt.zero_grad()
                    if sharded:  # FSDP gathers/reduces in forward/backward: run the same passes on one row
                        one = perm[:1].to(self.device)
                        zero = (sequence_logprobs(self.policy, exp["seqs"][one], exp["amask"][one], T).sum()
                                + self.critic(exp["seqs"][one], exp["amask"][one]).sum()) * 0.0
                    else:
                        params = [p for p in (*self.policy.parameters(), *self.critic.parameters())
                                  if p.requires_grad]
                        zero = sum(p.sum() for p in params) * 0.0
                    self.manual_backward(zero)
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), h.max_grad_norm)
                    torch.nn.utils.clip_grad_norm_(self.critic.parameters(), h.max_grad_norm)
                    opt.step()
                    continue
                logp, ent = sequence_logprobs(self.policy, exp["seqs"][mb], exp["amask"][mb], T, return_entropy=True)
                pl, pst = policy_loss(logp.float() * m, exp["old_logp"][mb], exp["adv"][mb], m, h.clip_low,
                                      h.clip_high, h.ratio_level, h.agg)
                v = self.critic(exp["seqs"][mb], exp["amask"][mb])[:, Pl - 1:Pl - 1 + T]
                vl, vst = value_loss(v, exp["values"][mb], exp["ret"][mb], m, h.value_clip, h.agg)
                entropy = masked_mean(ent.float(), m)
                loss = pl + h.vf_coef * vl - h.entropy_coef * entropy
                opt.zero_grad()
                self.manual_backward(loss)
                gn_pi = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), h.max_grad_norm)
                gn_v = torch.nn.utils.clip_grad_norm_(self.critic.parameters(), h.max_grad_norm)
                opt.step()
                for k, val in {"pg_loss": pst["loss"], "clip_frac": pst["clip_frac"], "approx_kl": pst["approx_kl"],
                               "vf_loss": vst["loss"], "vf_clip_frac": vst["vf_clip_frac"], "entropy": entropy,
                               "grad_norm_policy": gn_pi, "grad_norm_critic": gn_v}.items():
                    stats.setdefault(k, []).append(float(dist.full_value(torch.as_tensor(val).detach())))
        self.policy.eval()
        self.critic.eval()
        return {k: float(np.mean(v)) for k, v in stats.items()}

    def training_step(self, batch, batch_idx):
        exp = self.make_experience(batch)
        upd = self.ppo_update(exp) if dist.all_reduce(len(exp["idx"])) else {}
        if dist.is_distributed():  # loss stats: mean over the ranks that have them (a rank may have none)
            ranks = dist.all_gather_object(upd)
            upd = {k: float(np.mean([u[k] for u in ranks if k in u])) for k in sorted(set().union(*ranks))}
        # metrics (R², pass rates, kept fraction) over every rank's samples, not one rank's share
        keep, reward, score = (dist.gather_cat(exp[k].cpu()) for k in ("keep", "reward", "score"))
        metrics = {
            "rl_step": float(self.rl_step),
            "reward": reward.mean().item(),
            "reward_kept": reward[keep].mean().item(),
            "pass_rate": score.mean().item(),
            "pass_rate_kept": score[keep].mean().item(),
            "kept_fraction": keep.float().mean().item(),
            "r2_all": r_squared(reward, score),
            "r2_kept": r_squared(reward[keep], score[keep]),
            "kl": float(dist.gather_cat(exp["kl"].cpu()).mean()) if len(keep) and keep.any() else 0.0,
            "response_len": dist.gather_cat(exp["resp_len"].cpu()).mean().item(),
            **upd,
        }
        self.log_dict({f"train/{k}": (v if not math.isnan(v) else float("nan")) for k, v in metrics.items()},
                      on_step=True, on_epoch=False, batch_size=exp["P"])  # already over all ranks
        self.last_metrics = metrics
        if self.hparams.log_rollouts and self._trainer is not None:
            self.log_rollouts(exp)
        self.rl_step += 1

    def rollout_rows(self, exp: dict) -> list[dict]:
        N = exp["N"]
        return [{"step": self.rl_step, "prompt_id": p.task_id, "sample_idx": i % N, "prompt": p.prompt,
                 "response": text, "reward": float(exp["reward"][i]), "score": float(exp["score"][i]),
                 "kept": bool(exp["keep"][i]), "advantage": float(exp["adv_per_sample"][i]),
                 "strategy": str(self.hparams.strategy)}
                for i, (p, text) in enumerate(zip(exp["problems"], exp["texts"]))]

    def log_rollouts(self, exp: dict) -> None:
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
                self.policy.save_pretrained(out, state_dict=state)
                self.tokenizer.save_pretrained(out)
