"""GRPO as a LightningModule, with a pluggable prompt sampler (uniform | dapo_filter | vade | vade_filter).

The step itself is :func:`pfkit.rl.grpo.step` (collect through the sampler, group-relative advantages,
clipped surrogate); this module wires it to Lightning: the optimizer and ``manual_backward``, the prompt
sets (``PromptDataModule`` or :meth:`GRPOModule.attach`), the sampler (``pfkit.data.samplers``), logging
(mean reward, fraction of zero-variance groups, effective samples, rollouts spent; ``rollouts.parquet`` and
``difficulty.parquet`` rows per DESIGN.md), validation pass rate, and checkpoints (sampler/tracker state
and every rank's rollout RNG).

DDP (``--trainer.strategy ddp --trainer.devices N``): every rank holds the same sampler (same seed, same
state) and so makes the same selection; the selected prompts are rolled out round-robin across ranks and
the rewards gathered back, so every rank updates its tracker with the whole batch's evidence and
alpha/beta stay identical without a broadcast (see :mod:`pfkit.rl.grpo` for the loss normaliser).
Each rank has its own rollout RNG stream (``pfkit.distributed.seed_rank_stream``).

FSDP (``ModelParallelStrategy``, configs/gpu/grpo_vade_fsdp.yaml): the policy is sharded per transformer block
in ``configure_model``; the sampler's rollouts run inside ``pfkit.distributed.gathered_params`` (full weights,
no collective per decoding step), and a rank with nothing to train runs the same forwards on a placeholder row.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule

from pfkit import distributed as dist
from pfkit.data.samplers import PromptSampler, difficulty_rows, make_sampler
from pfkit.rl import grpo
from pfkit.rollout import sample_and_check


class GRPOModule(LightningModule):
    """Group Relative Policy Optimization with a difficulty-aware prompt sampler.

    Args:
        policy: local Hugging Face checkpoint folder, ``"embedded"`` (the shipped code policy) or
            ``"embedded_vlm"`` (the shipped vision-language policy). A folder whose config is an
            image-text-to-text model (Qwen2.5-VL, LLaVA, ...) loads as a VLM with its processor, and the
            prompt set's images (``PromptSet.images``) go into its rollouts and every log-prob pass.
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
            False = one full teacher-forced pass per sample (``pfkit.rollout.sequence_logprobs``). A VLM
            always takes the full pass (``pfkit.rollout.vlm.sequence_logprobs``).
        chat_template: VLM only: wrap each prompt in the processor's chat template (instruction-tuned
            checkpoints such as Qwen2.5-VL-Instruct).
        rollout_batch_prompts: sample the step's prompts in chunks of this many (None = all at once);
        overlap_verify: with chunks (and in ``evaluate``, which samples in chunks of ``batch_size``), verify
            chunk i (sandbox processes) while chunk i+1 is sampled. Same rewards, order and generator draws
            either way (``pfkit.rollout.sample_and_check``).
        engine: rollout engine: ``hf`` (``pfkit.rollout.generate`` on the trained model) or ``vllm``
            (:class:`pfkit.rollout.vllm.VLLMEngine`, colocated in this process, weights pushed after every
            optimizer step; ``pip install pfkit[vllm]``). engine_options: ``VLLMEngine`` arguments, e.g.
            ``{"gpu_memory_utilization": 0.3, "kv_cache_gb": 1, "sleep": true}``.
        is_cap: with ``engine: vllm``, truncated importance-sampling cap C (token loss x min(pi_train /
            pi_vllm, C), :func:`pfkit.rl.grpo.truncated_is_weights`); None = no correction. Ignored by ``hf``.
    """

    def __init__(self, policy: str = "embedded", sampler: str = "vade", sampler_options: dict | None = None,
                 prompts_per_step: int = 16, group_size: int = 8, max_new_tokens: int = 96,
                 temperature: float = 1.0, top_p: float = 1.0, lr: float = 5e-5, weight_decay: float = 0.0,
                 clip_low: float = 0.2, clip_high: float = 0.28, ratio_level: str = "token",
                 agg: str = "token-mean", adv_scale: str = "std", kl_coef: float = 0.0,
                 kl_estimator: str = "k3", ppo_epochs: int = 1, minibatch_size: int | None = None,
                 max_grad_norm: float | None = 1.0, rollout_budget: int | None = None,
                 eval_temperature: float = 0.0, eval_samples: int = 1, log_rollouts: bool = True,
                 log_difficulty: str = "all", shared_prefix: bool = True, rollout_batch_prompts: int | None = None,
                 overlap_verify: bool = True, seed: int = 0, engine: str = "hf", engine_options: dict | None = None,
                 is_cap: float | None = 2.0, chat_template: bool = False):
        super().__init__()
        if log_difficulty not in ("all", "touched", "none"):
            raise ValueError(f"log_difficulty must be 'all', 'touched' or 'none', got {log_difficulty!r}")
        if engine not in ("hf", "vllm"):
            raise ValueError(f"engine must be 'hf' or 'vllm', got {engine!r}")
        if ppo_epochs < 1:
            raise ValueError(f"ppo_epochs must be >= 1, got {ppo_epochs}")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = None
        self.tokenizer = None
        self.ref_model = None
        self.processor = None
        if policy is not None:
            from pfkit.models import is_vision_language, load_policy, load_vlm

            if is_vision_language(policy):
                model, processor = load_vlm(policy)
                self.set_policy(model, processor.tokenizer, processor=processor)
            else:
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
        self.engine = None  # the vLLM engine, built on first use (engine="vllm")

    # ------------------------------------------------------------------------------------------ setup
    def set_policy(self, model, tokenizer, processor=None) -> GRPOModule:
        """Use an in-memory policy (Python API; ``policy=None`` at construction); a VLM also needs its
        ``processor`` (``tokenizer`` = ``processor.tokenizer``)."""
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
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
        if not getattr(self, "_rank_seeded", False):  # rank 0 keeps the single-process stream
            self._rank_seeded = dist.seed_rank_stream(self.gen, self.hparams.seed)
        if self.prompt_set is None:  # Lightning has run the datamodule's setup before this one
            dm = self.trainer.datamodule if self._trainer is not None else None
            if getattr(dm, "train_set", None) is None:
                raise ValueError("GRPOModule needs prompts: use --data PromptDataModule or module.attach(train_set)")
            self.prompt_set, self.val_set = dm.train_set, dm.val_set
        if self.sampler is None:
            self._build_sampler()

    def on_fit_start(self) -> None:
        if self.hparams.engine == "vllm":  # build now (after configure_model), not inside the first step's timing
            self._engine()

    def configure_model(self) -> None:
        # FSDP (ModelParallelStrategy): shard the policy; the frozen reference stays replicated
        if self.device_mesh is not None:
            dist.fully_shard_models(self.model, mesh=self.device_mesh)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    @property
    def config(self) -> grpo.GRPOConfig:
        cfg = grpo.GRPOConfig.from_dict(self.hparams)
        if self.hparams.engine == "hf":  # same sampler as trainer: nothing to correct
            cfg.is_cap = None
        return cfg

    def _engine(self):
        """The vLLM engine holding the current weights (built from the policy's folder on first use)."""
        if self.engine is None:
            if self.device_mesh is not None:
                raise ValueError("engine='vllm' does not support FSDP (ModelParallelStrategy) yet; use DDP or "
                                 "engine='hf'")
            from pfkit.rollout.vllm import VLLMEngine

            self.engine = VLLMEngine(self.model, self.tokenizer, path=self.hparams.policy,
                                     max_new_tokens=self.hparams.max_new_tokens, **(self.hparams.engine_options or {}))
        return self.engine

    def _sample_and_check(self, ids, prompts, group_size, *, temperature, generator, check, stop, images=None,
                          **kw):
        """``sample_and_check`` through the configured engine (same table and rollout): one loop, the engine
        only decides how a chunk is sampled (``sample=``; None = :func:`pfkit.rollout.generate` on the model)."""
        h = self.hparams
        sample = None
        if self.processor is not None:  # a VLM: each prompt's image goes through its processor
            from pfkit.rollout import vlm

            sample = vlm.chunk_sampler(self.model, self.processor, images, len(ids),
                                       chat_template=h.get("chat_template", False))
        elif h.engine == "vllm":
            sample = self._engine().sample_chunk
        return sample_and_check(self.model, self.tokenizer, ids, group_size, prompts=prompts, check=check,
                                max_new_tokens=h.max_new_tokens, temperature=temperature, top_p=h.top_p, stop=stop,
                                generator=generator, overlap=h.get("overlap_verify", True), sample=sample, **kw)

    # ---------------------------------------------------------------------------------------- rollout
    def rollout(self, ids: list[int]) -> tuple[torch.Tensor, list]:
        """rollout_fn for the sampler: G completions per prompt, scored by the verifier; the payload of
        prompt j is its group's :class:`~pfkit.rollout.Rollout`."""
        h = self.hparams
        ps = self.prompt_set
        table, ro = self._sample_and_check(ids, [ps.prompts[i] for i in ids], h.group_size, check=ps.score,
                                           temperature=h.temperature, stop=ps.stop, generator=self.gen,
                                           images=self._images(ps, ids), return_rollout=True,
                                           batch_prompts=h.get("rollout_batch_prompts"))
        rewards = torch.tensor(table["score"].tolist(), dtype=torch.float32)
        return rewards.view(len(ids), h.group_size), ro.groups(h.group_size)

    @staticmethod
    def _images(ps, ids):
        """The images of prompts ``ids`` of a prompt set (None for a text-only set)."""
        return [ps.images[i] for i in ids] if ps.images is not None else None

    # ------------------------------------------------------------------------------------------- step
    def training_step(self, batch: Any, batch_idx: int):
        h = self.hparams
        if h.rollout_budget is not None and self.sampler.rollouts_spent >= h.rollout_budget:
            self.trainer.should_stop = True
            return None
        sampler = self.sampler if self.engine is None else _EngineSleeps(self.sampler, self.engine)
        res = grpo.step(self.model, self.optimizers(), sampler, self.rollout, self.config,
                        ref_policy=self.ref_model, generator=self.gen, backward=self.manual_backward,
                        device=self.device)
        stats = res.stats
        if self.engine is not None:  # the next rollouts sample from the updated weights
            stats["engine_push_time"] = self.engine.push(self.model)
        self._last_batch, self._last_adv, self._last_ref = res.batch, res.advantages, res.ref_logprobs
        if res.batch.payload:
            self.effective_total += int(stats["effective_samples"])
            stats["effective_total"] = float(self.effective_total)
        self.step_times.append(stats["step_time"])
        self.step_cpu_times.append(stats["step_cpu_time"])
        self.history.append({"step": self.global_step, **stats})
        if dist.is_distributed():
            # rank-local numbers (loss, entropy, clip_frac) are averaged over the ranks that have them (a rank
            # with no effective samples has none, so log(sync_dist=True)'s mean over all ranks does not fit);
            # the rest are whole-batch already and equal on every rank
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
            tested = self.prompt_set.problems is not None  # the code task: the reward is the unit-test score
            last_ref = getattr(self, "_last_ref", None)
            for j, (pid, group) in enumerate(zip(batch.prompt_ids, batch.payload)):
                on = group.response_mask.bool() if group is not None else None
                ref = None  # with a KL term, the reference's per-token log-probs too (the inspectors' view):
                if group is not None and last_ref is not None:  # the ones the step's KL term used
                    ref = last_ref[j]
                elif group is not None and self.ref_model is not None:  # a batch not from training_step
                    with torch.no_grad():
                        ref = group.logprobs_under(self.ref_model).float()  # a VLM group: with its images
                image = {}  # image-and-text prompts: the inspectors show the image by its prompt
                if self.prompt_set.images is not None:
                    img = self.prompt_set.images[pid]
                    image = {"image": str(img) if isinstance(img, (str, Path)) else None}
                for g, text in enumerate(group.texts if group is not None else []):  # None: another rank's
                    r = float(batch.rewards[j, g])
                    ids = group.response_ids[g][on[g]].tolist()
                    rows.append({"step": step, "prompt_id": self.prompt_set.ids[pid], "sample_idx": g, **image,
                                 "prompt": self.prompt_set.prompts[pid], "response": text, "reward": r,
                                 "score": r if tested else float("nan"), "kept": True,
                                 "advantage": adv[j * h.group_size + g],
                                 # per-token view (the inspectors): each response token and its policy log-prob
                                 "tokens": self.tokenizer.batch_decode([[t] for t in ids]),
                                 "token_logprobs": group.logprobs[g][on[g]].float().tolist(),
                                 **({} if ref is None else {"ref_token_logprobs": ref[g][on[g]].tolist()})})
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
        g = torch.Generator().manual_seed(dist.rank_seed(h.seed + 777))
        mine = dist.shard(range(len(ps)))  # each rank scores its share; totals are summed over ranks
        total, count = 0.0, 0
        if mine:
            with dist.gathered_params(self.model):  # FSDP: ranks may run different numbers of batches
                table = self._sample_and_check(mine, [ps.prompts[i] for i in mine], n, check=ps.score,
                                               temperature=temperature, stop=ps.stop, generator=g,
                                               batch_prompts=batch_size, images=self._images(ps, mine))
            total, count = float(table["score"].sum()), len(table)
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


class _EngineSleeps:
    """The sampler, with the vLLM engine put to sleep once a step's rollouts are collected, so the update has
    its device memory (a no-op where vLLM has no sleep mode, e.g. CPU); the weight push after the step wakes it."""

    def __init__(self, sampler, engine):
        self._sampler, self._engine = sampler, engine

    def collect(self, *args, **kwargs):
        try:
            return self._sampler.collect(*args, **kwargs)
        finally:
            self._engine.sleep()

    def __getattr__(self, name):
        return getattr(self._sampler, name)
