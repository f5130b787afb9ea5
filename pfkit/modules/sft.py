"""Supervised fine-tuning of a code policy on prompt + reference, with held-out pass@1 as validation.

``pfkit fit -c configs/sft_codegen.yaml`` trains the embedded default policy from scratch (tokenizer
included) on ``CodeSFTDataModule``; ``policy: path/to/checkpoint`` fine-tunes any local causal LM instead.
Validation samples completions the way the RL methods do (temperature 1, top-p 0.9), runs them through
the sandbox and logs pass@1 and the spread of per-problem success rates (all-fail / mixed / all-pass),
the figures that tell whether the policy is a useful starting point for PF-PPO and VADE.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from lightning.pytorch import LightningModule

from pfkit import distributed as dist
from pfkit import models
from pfkit.rollout import sample_and_check
from pfkit.runs import run_dir_of
from pfkit.tasks import CodeProblem


def rate_summary(rates: Sequence[float]) -> dict[str, float]:
    """pass@1 (mean per-problem rate) and the fractions of problems with rate 0, strictly between, and 1."""
    r = torch.tensor(list(rates), dtype=torch.float64)
    if r.numel() == 0:
        return {"pass@1": float("nan"), "frac_zero": float("nan"), "frac_mixed": float("nan"), "frac_one": float("nan")}
    return {"pass@1": r.mean().item(), "frac_zero": (r == 0).double().mean().item(),
            "frac_mixed": ((r > 0) & (r < 1)).double().mean().item(), "frac_one": (r == 1).double().mean().item()}


def pass_rates(model, tokenizer, problems: Sequence[CodeProblem], *, samples: int = 8, temperature: float = 1.0,
               top_p: float = 0.9, max_new_tokens: int = 96, seed: int = 0, timeout: float = 3.0) -> list[float]:
    """Per-problem success rate over ``samples`` sampled completions (cut at EOS or the end of the function
    body, the way the RL methods sample), verified by the sandbox."""
    table = sample_and_check(model, tokenizer, problems, samples, max_new_tokens=max_new_tokens,
                             temperature=temperature, top_p=top_p, seed=seed, timeout=timeout,
                             batch_prompts=max(1, 64 // samples))
    return table["score"].to_numpy().reshape(len(problems), samples).mean(1).tolist()


class SFTModule(LightningModule):
    """Causal-LM SFT on the completion tokens (labels are -100 on prompt and padding).

    ``policy="scratch"`` trains a tokenizer on the datamodule's ``corpus()`` and builds a GPT-2 with the
    given size (``pfkit.models.build_policy``); any other value is a local checkpoint for
    ``pfkit.models.load_policy`` ("embedded" = pfkit/assets/policy). The final policy is saved in Hugging Face
    format to ``RUN_DIR/policy`` so RL runs can start from it with ``load_policy``.
    """

    def __init__(self, policy: str = "scratch", vocab_size: int = 1024, n_layer: int = 4, n_embd: int = 128,
                 n_head: int = 4, n_positions: int = 384, lr: float = 3e-3, weight_decay: float = 0.01,
                 warmup_steps: int = 20, min_lr_ratio: float = 0.1, eval_samples: int = 4,
                 eval_temperature: float = 1.0, eval_top_p: float = 0.9, eval_max_new_tokens: int = 96,
                 eval_seed: int = 0, save_policy: bool = True):
        super().__init__()
        self.save_hyperparameters()
        self.model = None
        self.tokenizer = None
        self._rates: dict[str, list[float]] = defaultdict(list)

    # ------------------------------------------------------------------ policy
    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.model is None:
            h = self.hparams
            if h.policy == "scratch":
                if dm is None or not hasattr(dm, "corpus"):
                    raise ValueError("policy='scratch' trains a tokenizer on the datamodule's corpus(); use "
                                     "CodeSFTDataModule or give a checkpoint path as policy")
                self.tokenizer = models.train_tokenizer(dm.corpus(), vocab_size=h.vocab_size)
                self.model = models.build_policy(self.tokenizer, n_layer=h.n_layer, n_embd=h.n_embd,
                                                 n_head=h.n_head, n_positions=h.n_positions)
            else:
                self.model, self.tokenizer = models.load_policy(h.policy)
                self.model.train()

    def configure_model(self) -> None:
        # FSDP (ModelParallelStrategy): shard the policy (called after setup() has built or loaded it)
        if self.device_mesh is not None:
            dist.fully_shard_models(self.model, mesh=self.device_mesh)

    def configure_optimizers(self):
        h = self.hparams
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": h.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=h.lr, betas=(0.9, 0.95))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        # linear warm-up ((step + 1) / warmup_steps), then cosine decay to min_lr_ratio * lr by the last step
        S = torch.optim.lr_scheduler
        cosine = S.CosineAnnealingLR(opt, T_max=max(1, total - h.warmup_steps), eta_min=h.lr * h.min_lr_ratio)
        sched = cosine if h.warmup_steps <= 0 else S.SequentialLR(
            opt, [S.LinearLR(opt, start_factor=1 / h.warmup_steps, total_iters=max(1, h.warmup_steps - 1)), cosine],
            milestones=[h.warmup_steps])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ steps
    def forward(self, input_ids, attention_mask, labels=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch, batch_idx):
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def _eval_step(self, batch, split: str):
        problems = list(batch["problems"])
        loss = self(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        self.log(f"{split}/loss", loss, batch_size=len(problems), prog_bar=True)
        if self.hparams.eval_samples > 0:
            h = self.hparams
            with dist.gathered_params(self.model):  # FSDP: full weights for sampling (collective)
                rates = pass_rates(self.model, self.tokenizer, problems, samples=h.eval_samples,
                                   temperature=h.eval_temperature, top_p=h.eval_top_p,
                                   max_new_tokens=h.eval_max_new_tokens, seed=h.eval_seed + len(self._rates[split]))
            self._rates[split].extend(rates)

    def _eval_epoch_end(self, split: str):
        # DDP: each rank sampled its shard of the problems; the summary is over all of them
        rates = [r for part in dist.all_gather_object(self._rates.pop(split, [])) for r in part]
        if rates:
            for k, v in rate_summary(rates).items():
                self.log(f"{split}/{k}", v, prog_bar=k == "pass@1")

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self):
        self._eval_epoch_end("val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def on_test_epoch_end(self):
        self._eval_epoch_end("test")

    # ------------------------------------------------------------------ artifacts
    def save_policy_to(self, path, state_dict: dict | None = None) -> None:
        """Hugging Face format (safetensors + tokenizer + config), loadable with ``load_policy(path)``."""
        from pfkit.models import save_policy

        save_policy(self.model, self.tokenizer, path, state_dict=state_dict, started_from=str(self.hparams.policy),
                    recipe={"module": type(self).__name__, **self.hparams})

    def on_fit_end(self):
        if self.hparams.save_policy:
            run = run_dir_of(self.trainer)  # collective under DDP (log_dir is broadcast): every rank calls it
            state = dist.full_state_dict(self.model)  # FSDP: gathered to rank 0 (collective: every rank)
            if self.trainer.is_global_zero:
                self.save_policy_to(run.path / "policy", state_dict=state)
