"""GRPO as a LightningModule, with a pluggable prompt sampler (uniform | dapo_filter | vade | vade_filter).

One training step (``training_step``):

1. the sampler picks prompts and has them rolled out, ``group_size`` completions each
   (``pfkit.rollout.generate``), scored by the prompt set's verifier (unit tests in the sandbox for the
   code task); ``dapo_filter`` drops zero-variance groups and refills, ``vade`` selects by Thompson
   sampling before rollout (``pfkit.data.samplers``);
2. group-relative advantages (``pfkit.rl.advantages.group_relative``: mean-centred, optional std scale);
3. the clipped surrogate (``pfkit.rl.losses.policy_loss``: clip-higher via ``clip_low``/``clip_high``,
   token or GSPO sequence ratio, token-mean or seq-mean aggregation), plus ``kl_coef * KL(pi || ref)``
   (k3 by default) when ``kl_coef > 0``; ``ppo_epochs`` passes over ``minibatch_size`` chunks.

Samples whose advantage is exactly 0 contribute nothing to the clipped term, so when ``kl_coef == 0`` they
are left out of the forward/backward pass and the loss is rescaled to the same normaliser the full batch
would have had (token count for token-mean, sequence count for seq-mean): identical gradient, less compute.

Per step it logs mean reward, fraction of zero-variance groups, effective (non-zero-advantage) samples and
rollouts spent so far, and appends ``rollouts.parquet`` and ``difficulty.parquet`` rows (DESIGN.md
contract) to the run folder. Sampler/tracker state and the rollout RNG go into checkpoints
(``on_save_checkpoint``/``on_load_checkpoint``).

DDP (``--trainer.strategy ddp --trainer.devices N``): every rank holds the same sampler (same seed, same
state) and so makes the same selection; the selected prompts are rolled out round-robin across ranks
(``pfkit.distributed.sharded_rollout``) and the rewards gathered back, so every rank updates its tracker
with the whole batch's evidence and alpha/beta stay identical without a broadcast. Each rank trains on its
own groups, with the loss normaliser of the whole batch times N (DDP averages gradients), so one step
equals the single-process step on the same rollouts; ranks agree on the number of backward passes.
Each rank has its own rollout RNG stream; checkpoints keep all of them.

FSDP (``ModelParallelStrategy``, configs/gpu/grpo_vade_fsdp.yaml): the policy is sharded per transformer block
in ``configure_model``; the sampler's rollouts run inside ``pfkit.distributed.gathered_params`` (full weights,
no collective per decoding step), and a rank with nothing to train runs the same forwards on a placeholder row.
"""

from __future__ import annotations

import copy
import inspect
import time
from typing import Any

import torch
from lightning.pytorch import LightningModule

from pfkit import distributed as dist
from pfkit.data.samplers import GroupBatch, PromptSampler, difficulty_rows, make_sampler, zero_variance
from pfkit.rl.advantages import group_relative
from pfkit.rl.losses import aggregate, kl, policy_loss
from pfkit.rollout import generate, sequence_logprobs

_EMPTY = {"prompt_ids": torch.zeros(1, dtype=torch.long), "response_ids": torch.zeros(0, dtype=torch.long),
          "logprobs": torch.zeros(0)}  # placeholder row for a rank without samples (never trained on)


def collate_samples(samples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts + right-padded responses -> ``sequences``, ``attention_mask``, ``response_mask``."""
    P = max(len(s["prompt_ids"]) for s in samples)
    T = max(1, max(len(s["response_ids"]) for s in samples))
    B = len(samples)
    seq = torch.full((B, P + T), pad_id, dtype=torch.long)
    att = torch.zeros((B, P + T), dtype=torch.long)
    old = torch.zeros((B, T))
    for b, s in enumerate(samples):
        p, r = s["prompt_ids"], s["response_ids"]
        seq[b, P - len(p):P] = p
        att[b, P - len(p):P] = 1
        seq[b, P:P + len(r)] = r
        att[b, P:P + len(r)] = 1
        old[b, :len(r)] = s["logprobs"]
    return {"sequences": seq, "attention_mask": att, "response_mask": att[:, P:], "old_logprobs": old,
            "response_len": T}


def shared_prefix_logprobs(model, prompts: list[torch.Tensor], group_index: torch.Tensor,
                           response_ids: torch.Tensor, response_mask: torch.Tensor, *, pad_id: int,
                           return_entropy: bool = False):
    """Per-token log-probs ``[B, T]`` of responses, running each *distinct* prompt through the model once.

    A GRPO group is G responses to one prompt, so the prompt's keys/values are the same for all G: they are
    computed once per prompt (with gradient), gathered per row (``group_index[b]`` = which prompt row b
    answers) through the cache, and only the response tokens are run per row. Same numbers as
    :func:`pfkit.rollout.sequence_logprobs` on the concatenated sequences (left-padded prompts, positions
    from the attention mask), at about ``(P/G + T) / (P + T)`` of its compute for prompt length P. (A small
    GRPO-specific addition beside ``pfkit.rollout``; needs a model whose cache supports
    ``batch_select_indices``, e.g. any ``transformers`` causal LM with a ``DynamicCache``.)
    """
    dev = response_ids.device
    U, P = len(prompts), max(len(p) for p in prompts)
    pids = torch.full((U, P), pad_id, dtype=torch.long, device=dev)
    pmask = torch.zeros((U, P), dtype=torch.long, device=dev)
    for u, p in enumerate(prompts):
        pids[u, P - len(p):] = p.to(dev)
        pmask[u, P - len(p):] = 1
    ppos = (pmask.cumsum(-1) - 1).clamp(min=0) * pmask
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    out = model(input_ids=pids, attention_mask=pmask, position_ids=ppos, use_cache=True, logits_to_keep=1)
    cache = getattr(out, "cache", None) or out.past_key_values
    cache.batch_select_indices(group_index)
    first = out.logits[:, -1][group_index]                      # predicts response token 0
    T = response_ids.shape[1]
    rmask = response_mask.long()
    att = torch.cat([pmask[group_index], rmask], dim=1)
    pos = pmask.sum(-1)[group_index][:, None] + torch.arange(T, device=dev)[None, :]
    res = model(input_ids=response_ids, attention_mask=att, position_ids=pos, use_cache=True, logits_to_keep=T,
                **{cache_kw: cache})
    logits = torch.cat([first[:, None], res.logits[:, : T - 1]], dim=1).float()
    lse = torch.logsumexp(logits, dim=-1)
    m = response_mask.to(logits.dtype)
    logp = (logits.gather(-1, response_ids[..., None]).squeeze(-1) - lse) * m
    if not return_entropy:
        return logp
    entropy = (lse - (logits.softmax(-1) * logits).sum(-1)) * m
    return logp, entropy


class GRPOModule(LightningModule):
    """Group Relative Policy Optimization with a difficulty-aware prompt sampler.

    Args:
        policy: local Hugging Face checkpoint folder, or ``"embedded"`` (the shipped code policy).
        sampler: ``uniform`` (plain GRPO) | ``dapo_filter`` (DAPO dynamic sampling) | ``vade`` | ``vade_filter``.
        sampler_options: extra sampler arguments, e.g. ``{"oversample": 1.5, "max_rounds": 8,
            "tracker": {"global_decay": 0.99, "local_decay": 0.8, "local_clock": "visits"}}``.
        prompts_per_step: groups per step (k); group_size: completions per prompt (G).
        clip_low, clip_high: PPO clip range (DAPO clip-higher when ``clip_high > clip_low``).
        ratio_level: ``token`` (GRPO) or ``sequence`` (GSPO); agg: ``token-mean`` or ``seq-mean``.
        adv_scale: ``std`` (GRPO) or ``none`` (Dr. GRPO, mean-centred only).
        kl_coef, kl_estimator: KL-to-reference penalty in the loss (0 = no reference model is kept).
        ppo_epochs, minibatch_size: passes over the step's samples and chunk size (None = one chunk).
        rollout_budget: stop training once this many completions were generated (fair sampler comparisons).
        eval_temperature, eval_samples: decoding for ``validation`` pass rate (0 = greedy pass@1).
        log_rollouts, log_difficulty: write rollouts.parquet / difficulty.parquet (``all`` prompts each
            step, ``touched`` ones only, or ``none``).
        shared_prefix: run each group's prompt through the model once (``shared_prefix_logprobs``);
            False = one full teacher-forced pass per sample (``pfkit.rollout.sequence_logprobs``).
    """

    def __init__(self, policy: str = "embedded", sampler: str = "vade", sampler_options: dict | None = None,
                 prompts_per_step: int = 16, group_size: int = 8, max_new_tokens: int = 96,
                 temperature: float = 1.0, top_p: float = 1.0, lr: float = 5e-5, weight_decay: float = 0.0,
                 clip_low: float = 0.2, clip_high: float = 0.28, ratio_level: str = "token",
                 agg: str = "token-mean", adv_scale: str = "std", kl_coef: float = 0.0,
                 kl_estimator: str = "k3", ppo_epochs: int = 1, minibatch_size: int | None = None,
                 max_grad_norm: float | None = 1.0, rollout_budget: int | None = None,
                 eval_temperature: float = 0.0, eval_samples: int = 1, log_rollouts: bool = True,
                 log_difficulty: str = "all", shared_prefix: bool = True, seed: int = 0):
        super().__init__()
        if log_difficulty not in ("all", "touched", "none"):
            raise ValueError(f"log_difficulty must be 'all', 'touched' or 'none', got {log_difficulty!r}")
        if ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {ppo_epochs}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = None
        self.tokenizer = None
        self.ref_model = None
        if policy is not None:
            from pfkit.models import load_policy

            self.set_policy(*load_policy(policy))
        self.prompt_set = None
        self.val_set = None
        self.sampler: PromptSampler | None = None
        self._pending_state: dict | None = None
        self.gen = torch.Generator().manual_seed(seed)
        self.effective_total = 0
        self.step_times: list[float] = []
        self.step_cpu_times: list[float] = []
        self.history: list[dict] = []

    # ------------------------------------------------------------------------------------------ setup
    def set_policy(self, model, tokenizer) -> GRPOModule:
        """Use an in-memory policy (Python API; ``policy=None`` at construction)."""
        self.model, self.tokenizer = model, tokenizer
        if self.hparams.kl_coef > 0:
            self.ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        return self

    def attach(self, train_set, val_set=None) -> GRPOModule:
        """Use these ``PromptSet``s instead of a datamodule's (Python API)."""
        self.prompt_set, self.val_set = train_set, val_set
        self._build_sampler()
        return self

    def _build_sampler(self) -> None:
        h = self.hparams
        if h.prompts_per_step > len(self.prompt_set):
            raise ValueError(f"prompts_per_step={h.prompts_per_step} exceeds the {len(self.prompt_set)} training "
                             "prompts; lower prompts_per_step or use more training prompts")
        self.sampler = make_sampler(h.sampler, len(self.prompt_set), h.group_size, seed=h.seed,
                                    rollout_budget=h.rollout_budget, **(h.sampler_options or {}))
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def setup(self, stage: str | None = None) -> None:
        if self.model is None:
            raise ValueError("GRPOModule has no policy: pass policy=PATH|'embedded' or call set_policy(model, tok)")
        trainer = self._trainer
        if dist.rank() > 0 and not getattr(self, "_rank_seeded", False):
            # rank 0 keeps the single-process stream; other ranks get their own (restored from checkpoints)
            self.gen.manual_seed(self.hparams.seed + 1_000_003 * dist.rank())
            self._rank_seeded = True
        if self.prompt_set is None:
            dm = getattr(trainer, "datamodule", None) if trainer is not None else None
            if dm is None or getattr(dm, "train_set", None) is None:
                if dm is not None and hasattr(dm, "setup"):
                    dm.setup(stage)
            if dm is None or getattr(dm, "train_set", None) is None:
                raise ValueError("GRPOModule needs prompts: use --data PromptDataModule or module.attach(train_set)")
            self.prompt_set, self.val_set = dm.train_set, dm.val_set
        if self.sampler is None:
            self._build_sampler()

    def configure_model(self) -> None:
        # FSDP (ModelParallelStrategy): shard the policy; the frozen reference stays replicated
        if self.device_mesh is not None:
            dist.fully_shard_models(self.model, mesh=self.device_mesh)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    # ---------------------------------------------------------------------------------------- rollout
    def _rollout(self, ids: list[int]) -> tuple[torch.Tensor, list[dict]]:
        """rollout_fn for the sampler: G completions per prompt, scored by the verifier."""
        h = self.hparams
        ps = self.prompt_set
        ro = generate(self.model, self.tokenizer, [ps.prompts[i] for i in ids], n=h.group_size,
                      max_new_tokens=h.max_new_tokens, temperature=h.temperature, top_p=h.top_p, stop=ps.stop,
                      generator=self.gen)
        rewards = torch.tensor(ps.score([i for i in ids for _ in range(h.group_size)], ro.texts))
        P = ro.prompt_len
        payload = []
        for j in range(len(ids)):
            group = []
            for g in range(h.group_size):
                b = j * h.group_size + g
                n_resp = int(ro.response_mask[b].sum())
                group.append({"prompt_ids": ro.sequences[b, :P][ro.attention_mask[b, :P].bool()].cpu(),
                              "response_ids": ro.response_ids[b, :n_resp].cpu(),
                              "logprobs": ro.logprobs[b, :n_resp].cpu(), "text": ro.texts[b]})
            payload.append(group)
        return rewards.view(len(ids), h.group_size), payload

    # ------------------------------------------------------------------------------------------- step
    def grpo_step(self) -> dict[str, float]:
        """One GRPO step outside Lightning's loop too (benchmarks call it directly after ``attach``)."""
        h = self.hparams
        t0, c0 = time.perf_counter(), time.process_time()
        rollout = self._rollout
        if dist.is_distributed():
            def rollout(ids):
                return dist.sharded_rollout(ids, self._rollout, h.group_size)
        with dist.gathered_params(self.model):  # FSDP: full weights for sampling (collective: all ranks)
            batch = self.sampler.collect(h.prompts_per_step, rollout)
        stats = self._update(batch)
        stats["step_time"] = time.perf_counter() - t0
        stats["step_cpu_time"] = time.process_time() - c0  # this process's CPU seconds (all threads)
        return stats

    def _update(self, batch: GroupBatch) -> dict[str, float]:
        h = self.hparams
        G = h.group_size
        gen_r = batch.generated_rewards
        stats = {
            "rollouts_spent": float(self.sampler.rollouts_spent),
            "rollouts_step": float(batch.rollouts),
            "reward_generated": float(gen_r.mean()) if gen_r.numel() else 0.0,
            "frac_zero_var": float(zero_variance(gen_r).float().mean()) if gen_r.numel() else 0.0,
            "groups_kept": float(len(batch.prompt_ids)),
            "groups_dropped": float(batch.dropped),
        }
        # flat sample list over the whole batch (row b = group b // G); None = rolled out on another rank
        samples = [s for group in batch.payload
                   for s in (group if group is not None else [None] * G)]
        if not samples:  # a filter sampler that found nothing useful this step (same on every rank)
            stats.update(reward_mean=0.0, effective_samples=0.0, loss=0.0)
            self._last_batch, self._last_adv = batch, torch.zeros(0)
            self._noop_step()
            return stats
        rewards = batch.rewards.reshape(-1)
        adv = group_relative(rewards, G, scale=h.adv_scale)
        effective = adv.abs() > 1e-8
        self.effective_total += int(effective.sum())
        stats.update(reward_mean=float(rewards.mean()), effective_samples=float(effective.sum()),
                     effective_total=float(self.effective_total))
        self._last_batch, self._last_adv = batch, adv

        local = torch.tensor([s is not None for s in samples])
        rows = torch.nonzero(local if h.kl_coef > 0 else local & effective).flatten()
        world = dist.world_size()
        if dist.all_reduce(int(rows.numel())) == 0:
            stats["loss"] = 0.0
            self._noop_step()
            return stats
        lens = torch.tensor([len(s["response_ids"]) for s in samples if s is not None], dtype=torch.float)
        n_tokens = dist.all_reduce(float(lens.sum()))
        # normaliser of the whole step batch (all ranks); / world because DDP averages the ranks' gradients
        full_norm = (max(n_tokens, 1.0) if h.agg == "token-mean" else float(len(samples))) / world
        stats["response_len"] = n_tokens / len(samples)
        # a DDP rank may have no samples of its own this step (it still joins every backward below)
        data = collate_samples([samples[i] for i in rows.tolist()] or [_EMPTY], self.tokenizer.pad_token_id)
        dev = self.device
        seq, att, rmask = data["sequences"].to(dev), data["attention_mask"].to(dev), data["response_mask"].to(dev)
        A = adv[rows].to(dev)
        T = data["response_len"]
        group_of = (torch.arange(len(samples)) // G)[rows]
        group_prompts = [group[0]["prompt_ids"] if group is not None else None for group in batch.payload]
        if rows.numel() == 0:  # the placeholder row of a rank without samples answers placeholder "group 0"
            group_of, group_prompts = torch.zeros(1, dtype=torch.long), [_EMPTY["prompt_ids"]]
        sharded = dist.is_sharded(self.model)
        pad_id = self.tokenizer.pad_token_id

        def logprobs(model, idx, entropy=False):
            if not h.shared_prefix:
                return sequence_logprobs(model, seq[idx], att[idx], T, return_entropy=entropy)
            groups, local = torch.unique(group_of[idx.cpu()], return_inverse=True)
            return shared_prefix_logprobs(model, [group_prompts[g] for g in groups.tolist()], local.to(dev),
                                          seq[idx, -T:], rmask[idx], pad_id=pad_id, return_entropy=entropy)

        ref_logp = None
        if h.kl_coef > 0 and rows.numel():
            with torch.no_grad():
                ref_logp = logprobs(self.ref_model, torch.arange(rows.numel(), device=dev))
        opt = self.optimizers() if self._trainer is not None else self._opt
        mb = h.minibatch_size or max(dist.all_reduce(int(rows.numel()), op="max"), 1)
        # DDP all-reduces gradients in every backward: every rank must make the same number of them
        n_chunks = dist.all_reduce(-(-int(rows.numel()) // mb), op="max")
        logs: dict[str, list[float]] = {}
        self.model.train()
        for _ in range(h.ppo_epochs):
            perm = torch.randperm(rows.numel(), generator=self.gen) if h.ppo_epochs > 1 else torch.arange(rows.numel())
            for c in range(n_chunks):
                start = c * mb
                idx = perm[start:start + mb].to(dev)
                if idx.numel() == 0:  # this rank ran out of samples: a zero-gradient pass keeps DDP in step
                    opt.zero_grad(set_to_none=True)
                    if sharded:  # FSDP gathers/reduces in forward/backward: run the same passes on row 0
                        zero = logprobs(self.model, torch.zeros(1, dtype=torch.long, device=dev)).sum() * 0.0
                    else:
                        zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
                    self.manual_backward(zero)
                    if h.max_grad_norm:
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), h.max_grad_norm)
                    opt.step()
                    continue
                m = rmask[idx]
                logp, ent = logprobs(self.model, idx, entropy=True)
                old = logp.detach() if h.ppo_epochs == 1 else data["old_logprobs"].to(dev)[idx]
                loss, st = policy_loss(logp, old, A[idx], m, clip_low=h.clip_low, clip_high=h.clip_high,
                                       ratio_level=h.ratio_level, agg=h.agg)
                # renormalise: the chunk's share of the normaliser the whole step batch (zero-advantage
                # samples included) would have had; exact full-batch gradient when there is one chunk
                part_norm = m.sum().clamp_min(1.0) if h.agg == "token-mean" else float(idx.numel())
                scale = part_norm / (full_norm * idx.numel() / rows.numel())
                loss = loss * scale
                if h.kl_coef > 0:
                    kl_term = aggregate(kl(logp, ref_logp[idx], h.kl_estimator), m, h.agg)
                    loss = loss + h.kl_coef * kl_term * scale
                    logs.setdefault("kl", []).append(float(kl_term))
                opt.zero_grad(set_to_none=True)
                if self._trainer is not None:
                    self.manual_backward(loss)
                else:
                    loss.backward()
                if h.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), h.max_grad_norm)
                opt.step()
                logs.setdefault("loss", []).append(float(loss.detach()))
                logs.setdefault("clip_frac", []).append(float(st["clip_frac"]))
                logs.setdefault("entropy", []).append(float((ent.detach() * m).sum() / m.sum().clamp_min(1)))
        self.model.eval()
        stats.update({k: sum(v) / len(v) for k, v in logs.items()})
        return stats

    def _noop_step(self) -> None:
        """A step with nothing to learn from: no parameter moves (every grad is None, which torch
        optimizers skip, so no Adam momentum drift), but Lightning still counts the step, so
        ``max_steps`` is reached even when every group was zero-variance."""
        opt = self.optimizers() if self._trainer is not None else self._opt
        opt.zero_grad(set_to_none=True)
        opt.step()

    def training_step(self, batch: Any, batch_idx: int):
        h = self.hparams
        if h.rollout_budget is not None and self.sampler.rollouts_spent >= h.rollout_budget:
            self.trainer.should_stop = True
            return None
        stats = self.grpo_step()
        self.step_times.append(stats["step_time"])
        self.step_cpu_times.append(stats["step_cpu_time"])
        self.history.append({"step": self.global_step, **stats})
        if dist.is_distributed():
            # rank-local numbers (loss, entropy, clip_frac) are averaged over the ranks that have them (a rank
            # with no effective samples has none); the rest are whole-batch already and equal on every rank
            ranks = dist.all_gather_object(stats)
            stats = {k: sum(r[k] for r in ranks if k in r) / sum(k in r for r in ranks)
                     for k in sorted(set().union(*ranks))}
        self.log_dict({f"train/{k}": v for k, v in stats.items()}, on_step=True, prog_bar=False, batch_size=1)
        self._write_tables(self.global_step)
        if h.rollout_budget is not None and self.sampler.rollouts_spent >= h.rollout_budget:
            self.trainer.should_stop = True
        return None

    def _write_tables(self, step: int) -> None:
        from pfkit.runs import run_dir_of

        h = self.hparams
        if self._trainer is None or (not h.log_rollouts and h.log_difficulty == "none"):
            return
        run = run_dir_of(self.trainer)
        batch = self._last_batch
        if h.log_rollouts and batch.payload:
            rows = []
            adv = self._last_adv.tolist()
            for j, (pid, group) in enumerate(zip(batch.prompt_ids, batch.payload)):
                for g, s in enumerate(group or []):  # None: this group was rolled out by another rank
                    r = float(batch.rewards[j, g])
                    rows.append({"step": step, "prompt_id": self.prompt_set.ids[pid], "sample_idx": g,
                                 "prompt": self.prompt_set.prompts[pid], "response": s["text"], "reward": r,
                                 "score": r, "kept": True, "advantage": adv[j * h.group_size + g]})
            run.append("rollouts", rows, step=step, rank=dist.rank())
        if h.log_difficulty != "none" and dist.rank() == 0:  # the tracker is identical on every rank
            ids = None if h.log_difficulty == "all" else sorted(set(batch.generated_ids))
            run.append("difficulty", difficulty_rows(self.sampler, batch, step, ids, self.prompt_set.ids), step=step)

    # ------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, prompt_set=None, *, temperature: float | None = None, samples: int | None = None,
                 batch_size: int = 64) -> float:
        """Pass rate (mean reward) of the current policy on a prompt set (default: the held-out set)."""
        h = self.hparams
        ps = prompt_set if prompt_set is not None else self.val_set
        if ps is None:
            raise ValueError("no held-out prompt set to evaluate; pass one or give the datamodule n_val > 0")
        temperature = h.eval_temperature if temperature is None else temperature
        n = h.eval_samples if samples is None else samples
        g = torch.Generator().manual_seed(h.seed + 777 + 1_000_003 * dist.rank())
        total, count = 0.0, 0
        mine = dist.shard(range(len(ps)))  # each rank scores its share; totals are summed over ranks
        with dist.gathered_params(self.model):  # FSDP: ranks may run different numbers of batches
            for start in range(0, len(mine), batch_size):
                ids = mine[start:start + batch_size]
                ro = generate(self.model, self.tokenizer, [ps.prompts[i] for i in ids], n=n,
                              max_new_tokens=h.max_new_tokens, temperature=temperature, top_p=h.top_p,
                              stop=ps.stop, generator=g)
                r = ps.score([i for i in ids for _ in range(n)], ro.texts)
                total += sum(r)
                count += len(r)
        total, count = dist.all_reduce(float(total)), dist.all_reduce(float(count))
        return total / max(count, 1)

    def validation_step(self, batch: Any, batch_idx: int):
        if self.val_set is None:
            return None
        self.log("val/pass_rate", self.evaluate(), batch_size=1, prog_bar=True)
        return None

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.sampler is not None:
            checkpoint["grpo_sampler"] = self.sampler.state_dict()
        checkpoint["grpo_rng"] = self.gen.get_state()
        checkpoint["grpo_rng_ranks"] = dist.all_gather_object(self.gen.get_state())  # every rank's stream
        checkpoint["grpo_effective_total"] = self.effective_total

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = {k: checkpoint[k] for k in ("grpo_sampler", "grpo_rng", "grpo_effective_total") if k in checkpoint}
        ranks = checkpoint.get("grpo_rng_ranks")
        if ranks is not None and len(ranks) == dist.world_size():
            state["grpo_rng"] = ranks[dist.rank()]
            self._rank_seeded = True
        if self.sampler is None:
            self._pending_state = state
        else:
            self._restore(state)

    def _restore(self, state: dict) -> None:
        if "grpo_sampler" in state:
            self.sampler.load_state_dict(state["grpo_sampler"])
        if "grpo_rng" in state:
            self.gen.set_state(state["grpo_rng"])
        self.effective_total = int(state.get("grpo_effective_total", 0))

    # --------------------------------------------------------------------------- plain-Python driving
    def init_optimizer(self) -> GRPOModule:
        """Optimizer for driving ``grpo_step`` without a Trainer (benchmarks)."""
        self._opt = self.configure_optimizers()
        return self
