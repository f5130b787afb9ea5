"""One PF-PPO iteration: PPO that trains only on the responses a filtration strategy keeps (Zhang/Shen et al.
2024, Algorithm 2 with the authors' "filter" implementation). Pure torch over typed data; the Lightning
module (``pfkit.modules.pfppo``) only wires optimizer, strategy hooks, logging and checkpoints around it.

    for each batch of P prompts:                                              (make_experience)
        1. sample N = group_size responses per prompt; run each against the unit tests (score, logged only)
        2. reward = RM(prompt, response), normalised with the RM's fixed statistics, clamped to +-reward_clip
           (or, with reward_source: oracle, the unit-test score + controlled noise: pfkit.rl.oracle)
        3. keep = filtration.select(reward[P, N], strategy)          per prompt: none | bon | br | bw | ...
        4. on the kept samples only:
               per-token reward r_t = -kl_coef * k1(old || ref), plus the RM reward at the last token
               values V_t from the critic; A, R = GAE(r, V, gamma, lambda); A whitened over the kept buffer
        5. for epoch in ppo_epochs, for shuffled minibatch:                   (update)
               loss = clipped policy loss + vf_coef * clipped value loss - entropy_coef * entropy
               loss.backward(); clip each model's grad norm; optimizer.step()

Dropped samples feed neither actor nor critic, so PF-PPO does ~2/5 of PPO-M's policy/critic work per
iteration at equal sampling and RM cost (paper Table 4). Advantages are whitened over the kept buffer
(the authors' reweight code whitens before filtering, so over dropped samples too; we follow the filter
version and the paper's "dropped samples are not used").

DDP: each rank holds its own prompts; whitening and the loss statistics are over all ranks' kept buffers
(``pfkit.distributed.whiten``), and ranks make the same number of backward passes (a rank with nothing
to train runs :func:`pfkit.distributed.zero_loss`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import partial

import numpy as np
import pandas as pd
import torch

from pfkit import distributed as dist
from pfkit.rl.advantages import gae, masked_mean
from pfkit.rl.filtration import select
from pfkit.rl.losses import kl, policy_loss, value_loss
from pfkit.rl.oracle import oracle_rewards
from pfkit.rollout import Rollout, sample_and_check, sequence_logprobs


@dataclass
class PPOConfig:
    """The hyper-parameters of one iteration (names and defaults as in ``PFPPOModule``)."""

    strategy: str = "br"
    group_size: int = 5
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 0.9
    kl_coef: float = 0.01
    gamma: float = 1.0
    lam: float = 0.95
    clip_low: float = 0.2
    clip_high: float = 0.2
    value_clip: float | None = 0.2
    ratio_level: str = "token"
    agg: str = "token-mean"
    ppo_epochs: int = 2
    minibatch_size: int = 16
    vf_coef: float = 1.0
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    reward_clip: float = 10.0
    max_grad_norm: float = 1.0
    sandbox_timeout: float = 3.0
    reward_source: str = "model"          # model (the learned RM) | oracle (pfkit.rl.oracle: tests + noise)
    oracle_profile: str = "noisy_middle"  # uniform | noisy_middle | noisy_top | exact | score | pure_noise
    oracle_sigma: float = 0.3

    @classmethod
    def from_dict(cls, d) -> PPOConfig:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass
class Experience:
    """One iteration's samples (``P * N`` rows, problem-major) and the kept buffer (``K`` rows) PPO trains on."""

    samples: pd.DataFrame             # sample_and_check's table: prompt_id, sample_idx, prompt, response, score, ...
    reward: torch.Tensor              # [P*N] normalised, clipped RM reward (the training signal)
    score: torch.Tensor               # [P*N] unit-test result (logged, R²; never trained on)
    keep: torch.Tensor                # [P*N] bool, the filtration strategy's choice
    advantage_per_sample: torch.Tensor  # [P*N] token-mean advantage of kept samples, NaN for dropped ones
    response_len: torch.Tensor        # [P*N] kept tokens per response
    kept: Rollout                     # the K kept rows (sequences, masks), on the training device
    mask: torch.Tensor                # [K, T] float response mask
    old_logprobs: torch.Tensor        # [K, T] under the sampling policy
    values: torch.Tensor              # [K, T] critic values before the update
    advantages: torch.Tensor          # [K, T] GAE advantages (whitened)
    returns: torch.Tensor             # [K, T] GAE returns (value targets)
    kl: torch.Tensor                  # [K] summed k1 KL to the reference per response


@torch.no_grad()
def make_experience(policy, tokenizer, ref, reward_model, critic, problems: Sequence, cfg: PPOConfig, *,
                    seed: int, generator: torch.Generator | None = None, device=None) -> Experience:
    """Steps 1-4: sample, score, filter, and compute advantages on the kept samples."""
    device = device or next(policy.parameters()).device
    problems = list(problems)
    P, N = len(problems), cfg.group_size
    # 1. sample and run the tests (FSDP: full weights for sampling; entering is a collective on all ranks)
    with dist.gathered_params(policy):
        table, ro = sample_and_check(policy, tokenizer, problems, N, max_new_tokens=cfg.max_new_tokens,
                                     temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
                                     timeout=cfg.sandbox_timeout, return_rollout=True)
    score = torch.tensor(table["score"].tolist())
    # per-token view (rollouts.parquet, the filtration inspector): each response's tokens and log-probs
    on = ro.response_mask.bool()
    table["tokens"] = [tokenizer.batch_decode([[t] for t in ro.response_ids[i][on[i]].tolist()]) for i in range(len(ro))]
    table["token_logprobs"] = [ro.logprobs[i][on[i]].float().tolist() for i in range(len(ro))]
    # 2. reward: the reward model, or the controlled-noise oracle (unit-test score + region-dependent noise)
    if cfg.reward_source == "oracle":
        noisy, _ = oracle_rewards(score, cfg.oracle_profile, cfg.oracle_sigma, generator=generator)
        reward = ((noisy - 0.5) / 0.5).clamp(-cfg.reward_clip, cfg.reward_clip)  # fixed scale: clean c -> [-1, 1]
    else:
        raw = reward_model.score_texts(tokenizer, table["prompt"].tolist(), ro.texts, normalize=False)
        reward = reward_model.normalize(raw, clip=cfg.reward_clip)
    # 3. filter per prompt by reward rank
    keep = select(reward.view(P, N), cfg.strategy, generator=generator).view(-1)
    idx = keep.nonzero().squeeze(1)
    # 4. per-token rewards, values, GAE on the kept samples
    kept = ro.select(idx, trim=False).to(device)
    T, Pl = kept.response_len, kept.prompt_len
    seqs, amask = kept.sequences, kept.attention_mask
    mask = kept.response_mask.float()
    old_logp = kept.logprobs.float() * mask
    ref.eval()
    critic.eval()
    ref_logp = sequence_logprobs(ref, seqs, amask, T).float() * mask
    ref_rows = [[] for _ in range(P * N)]  # the reference's log-probs: computed for kept samples only
    for row, i in enumerate(idx.tolist()):
        ref_rows[i] = ref_logp[row][mask[row].bool()].tolist()
    table["ref_token_logprobs"] = ref_rows
    values = critic(seqs, amask)[:, Pl - 1:Pl - 1 + T] * mask
    kl_tok = kl(old_logp, ref_logp, "k1") * mask
    tok_reward = -cfg.kl_coef * kl_tok
    has = mask.sum(-1) > 0
    last = (mask * torch.arange(T, device=device)).argmax(-1)
    rows = torch.arange(len(idx), device=device)[has]
    tok_reward[rows, last[has]] += reward[idx].to(device)[has]
    adv, ret = gae(tok_reward, values, mask, cfg.gamma, cfg.lam)
    if cfg.whiten_advantages and dist.all_reduce(float(mask.sum())) > 1:
        adv = dist.whiten(adv, mask)  # over the kept buffer of all ranks (= whiten in one process)

    adv_per_sample = torch.full((P * N,), float("nan"))
    adv_per_sample[idx] = masked_mean(adv, mask, dim=-1).cpu()
    return Experience(samples=table, reward=reward, score=score, keep=keep, advantage_per_sample=adv_per_sample,
                      response_len=ro.response_mask.sum(-1).float(), kept=kept, mask=mask, old_logprobs=old_logp,
                      values=values, advantages=adv, returns=ret, kl=kl_tok.sum(-1))


def update(policy, critic, optimizer, exp: Experience, cfg: PPOConfig, *, generator: torch.Generator | None = None,
           backward: Callable | None = None) -> dict[str, float]:
    """Step 5: ``ppo_epochs`` passes of shuffled minibatches over the kept buffer; averaged loss statistics.

    ``backward(loss)`` defaults to ``loss.backward()`` (Lightning passes ``manual_backward``).
    """
    backward = backward or torch.Tensor.backward
    device = exp.mask.device
    seqs, amask = exp.kept.sequences, exp.kept.attention_mask
    K, T, Pl = len(exp.kept), exp.kept.response_len, exp.kept.prompt_len
    policy.train()
    critic.train()
    stats: dict[str, list[float]] = {}
    n_mb = dist.all_reduce(-(-K // cfg.minibatch_size), op="max")  # same number of backward passes on every rank

    def optimize(loss):
        optimizer.zero_grad()
        backward(loss)
        gn_pi = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        gn_v = torch.nn.utils.clip_grad_norm_(critic.parameters(), cfg.max_grad_norm)
        optimizer.step()
        return gn_pi, gn_v

    def one_row_forward(one):  # FSDP: the passes a rank with nothing to train still has to run
        return sequence_logprobs(policy, seqs[one], amask[one], T).sum() + critic(seqs[one], amask[one]).sum()

    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(K, generator=generator)
        chunks = list(perm.split(cfg.minibatch_size))
        for c in range(n_mb):
            mb = (chunks[c] if c < len(chunks) else perm[:0]).to(device)
            m = exp.mask[mb]
            if dist.all_reduce(float(m.sum())) == 0:  # nothing to learn on any rank
                continue
            if m.sum() == 0:  # this rank has nothing: a zero-gradient pass keeps DDP in step
                optimize(dist.zero_loss(policy, critic, forward=partial(one_row_forward, perm[:1].to(device))))
                continue
            logp, ent = sequence_logprobs(policy, seqs[mb], amask[mb], T, return_entropy=True)
            pl, pst = policy_loss(logp.float() * m, exp.old_logprobs[mb], exp.advantages[mb], m, cfg.clip_low,
                                  cfg.clip_high, cfg.ratio_level, cfg.agg)
            v = critic(seqs[mb], amask[mb])[:, Pl - 1:Pl - 1 + T]
            vl, vst = value_loss(v, exp.values[mb], exp.returns[mb], m, cfg.value_clip, cfg.agg)
            entropy = masked_mean(ent.float(), m)
            gn_pi, gn_v = optimize(pl + cfg.vf_coef * vl - cfg.entropy_coef * entropy)
            for k, val in {"pg_loss": pst["loss"], "clip_frac": pst["clip_frac"], "approx_kl": pst["approx_kl"],
                           "vf_loss": vst["loss"], "vf_clip_frac": vst["vf_clip_frac"], "entropy": entropy,
                           "grad_norm_policy": gn_pi, "grad_norm_critic": gn_v}.items():
                stats.setdefault(k, []).append(float(dist.full_value(torch.as_tensor(val).detach())))
    policy.eval()
    critic.eval()
    return {k: float(np.mean(v)) for k, v in stats.items()}
