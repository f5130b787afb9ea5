"""Reward model: the policy's backbone + a scalar head, trained with the Bradley-Terry loss.

As in the PF-PPO paper (and OpenRLHF), the reward model is initialised from the SFT policy with an added
output layer, and trained on (chosen, rejected) pairs to maximise log sigma(R(chosen) - R(rejected)); here
the pairs are policy samples labelled by unit tests (``pfkit.data.preference``). The same
:class:`ScalarHeadModel` is PF-PPO's critic (initialised from the reward model, as in the authors' code):
it outputs one scalar per position, the reward is the one at the last token.

``pfkit fit -c configs/reward_codegen.yaml`` trains the embedded default; the run folder gets
``reward_model/`` (Hugging Face layout: ``AutoModelForSequenceClassification`` or :meth:`ScalarHeadModel.load`) and ``val/acc`` (held-out pairwise accuracy)
in metrics.csv. Rewards are normalised with a fixed mean/std of the training responses' scores stored with
the model (the authors' "normalize_reward" with fixed statistics).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from pfkit import distributed as dist
from pfkit.models import EMBEDDED_RM, ScalarHeadModel, policy_fingerprint  # noqa: F401 -- re-exported
from pfkit.runs import run_dir_of


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(R(chosen) - R(rejected)), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


class RewardModule(LightningModule):
    """Bradley-Terry training of a :class:`ScalarHeadModel` initialised from the policy at ``policy``.

    Logs train/loss, train/acc, val/loss and val/acc (pairwise accuracy on held-out prompts' pairs). With
    ``keep_best`` the weights of the best val/acc seen are the ones saved (early stopping: pair it with
    Lightning's ``EarlyStopping(monitor="val/acc", mode="max")`` and a ``val_check_interval``). At the
    end of fit, sets the reward normalisation from the training samples' scores and saves the model to
    ``RUN_DIR/reward_model`` (or ``save_to``).

    DDP: every rank builds the same pairs (checked at setup: the datamodule samples/reads them on each
    rank), Lightning's DistributedSampler gives each rank its share; val/loss and val/acc are sums over
    *all* ranks' held-out pairs, each counted once (the sampler's padding duplicates are left out); the
    calibration scores are split over the ranks and gathered; rank 0 writes the model.
    """

    def __init__(self, policy: str = "embedded", lr: float = 1e-4, weight_decay: float = 0.0,
                 warmup_steps: int = 10, save_to: str | None = None, likelihood_term: bool = False,
                 keep_best: bool = True):
        super().__init__()
        self.save_hyperparameters()
        from pfkit import models

        model, self.tokenizer = models.load_policy(policy)
        self.rm = ScalarHeadModel.from_policy(model, likelihood_term=likelihood_term)
        self._val = []
        self._best, self._best_acc, self._best_metrics = None, -1.0, {}

    @classmethod
    def from_models(cls, policy_model, tokenizer, **kw) -> RewardModule:
        """Build around an in-memory policy (tests, demos) instead of loading one from a path."""
        self = cls.__new__(cls)
        LightningModule.__init__(self)
        self.save_hyperparameters({"policy": "<in memory>", "lr": 1e-4, "weight_decay": 0.0, "warmup_steps": 10,
                                   "save_to": None, "likelihood_term": False, "keep_best": True, **kw})
        self.tokenizer = tokenizer
        self.rm = ScalarHeadModel.from_policy(policy_model, likelihood_term=self.hparams.likelihood_term)
        self._val = []
        self._best, self._best_acc, self._best_metrics = None, -1.0, {}
        return self

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        pairs = [getattr(dm, k, None) for k in ("train_pairs", "val_pairs")] if dm is not None else []
        if dist.is_distributed() and all(p is not None for p in pairs):
            # each rank built its own pairs; sharding them with a DistributedSampler is only right (and only
            # gives every rank the same number of steps) when they are identical everywhere
            h = hashlib.sha1()
            for frame in pairs:
                h.update(pd.util.hash_pandas_object(frame, index=False).values.tobytes())
            dist.check_same(h.hexdigest(), "the preference pairs (sampling is not deterministic across ranks; "
                                           "write the samples once and pass them as `samples: FILE.parquet`)")

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.rm.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                betas=(0.9, 0.95))
        warm = max(1, self.hparams.warmup_steps)  # linear warm-up: (step + 1) / warm, then constant
        sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1 / warm, total_iters=max(1, warm - 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _pair_scores(self, batch):
        n = batch["chosen_ids"].shape[0]
        L = max(batch["chosen_ids"].shape[1], batch["rejected_ids"].shape[1])

        def lpad(x, value):
            return F.pad(x, (L - x.shape[1], 0), value=value)

        pad = self.tokenizer.pad_token_id or 0
        ids = torch.cat([lpad(batch["chosen_ids"], pad), lpad(batch["rejected_ids"], pad)])
        mask = torch.cat([lpad(batch["chosen_mask"], 0), lpad(batch["rejected_mask"], 0)])
        rmask = torch.cat([lpad(batch["chosen_response_mask"], 0), lpad(batch["rejected_response_mask"], 0)])
        s = self.rm.score(ids, mask, rmask)
        return s[:n], s[n:]

    def training_step(self, batch, batch_idx):
        c, r = self._pair_scores(batch)
        loss = bradley_terry_loss(c, r)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(c))
        self.log("train/acc", (c > r).float().mean(), prog_bar=True, batch_size=len(c))
        return loss

    def validation_step(self, batch, batch_idx):
        c, r = self._pair_scores(batch)
        # per pair, in loader order: [BT loss, correct]
        self._val.append(torch.stack([-F.logsigmoid(c - r), (c > r).float()], dim=1).detach().cpu())

    def _val_counted(self, n: int) -> torch.Tensor:
        """Which of this rank's ``n`` val pairs count: under DDP Lightning's (unshuffled) DistributedSampler
        pads the set to a multiple of the world size by repeating its first pairs; rank r's k-th pair is
        pair ``r + k * world`` of the set, a padding duplicate when that is past the end."""
        from torch.utils.data import DistributedSampler

        loader = self.trainer.val_dataloaders if self._trainer is not None else None
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, DistributedSampler) or sampler.shuffle:
            return torch.ones(n, dtype=torch.bool)
        return sampler.rank + torch.arange(n) * sampler.num_replicas < len(sampler.dataset)

    def on_validation_epoch_end(self):
        per_pair = torch.cat(self._val) if self._val else torch.zeros(0, 2)
        self._val = []
        counted = self._val_counted(len(per_pair)).float()
        tot = dist.all_reduce(torch.cat([(per_pair * counted[:, None]).sum(0).double(), counted.sum()[None].double()]))
        if tot[2] > 0:  # [loss sum, correct, pairs] over every rank's pairs, each pair once
            acc = float(tot[1] / tot[2])
            self.log("val/loss", float(tot[0] / tot[2]))
            self.log("val/acc", acc, prog_bar=True)
            if self.hparams.get("keep_best", True) and not self.trainer.sanity_checking and acc > self._best_acc:
                # early stopping on held-out pair accuracy keeps the best weights, not the last (acc is the
                # same on every rank, so every rank keeps the same copy)
                self._best_acc = acc
                self._best = {k: v.detach().clone() for k, v in self.rm.state_dict().items()}
                self._best_metrics = {"val/loss": float(tot[0] / tot[2]), "val/acc": acc,
                                      "val/best_step": float(self.global_step)}

    @torch.no_grad()
    def calibrate(self, prompts: Sequence[str], responses: Sequence[str]) -> None:
        """Fix the reward normalisation to the mean/std of the raw scores of these responses (under DDP each
        rank scores its share and the scores are gathered; every rank gets the same statistics)."""
        mine = dist.shard(range(len(prompts)))
        raw = self.rm.score_texts(self.tokenizer, [prompts[i] for i in mine], [responses[i] for i in mine],
                                  normalize=False)
        raw = dist.gather_cat(raw)
        self.rm.reward_mean.fill_(raw.mean().item())
        self.rm.reward_std.fill_(max(raw.std().item(), 1e-6) if raw.numel() > 1 else 1.0)

    def on_fit_end(self):
        if self._best is not None:
            self.rm.load_state_dict(self._best)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_samples", None) is not None and len(dm.train_samples):
            self.calibrate(list(dm.train_samples["prompt"]), list(dm.train_samples["response"]))
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        metrics.update(self._best_metrics)  # the kept weights' held-out figures
        self.rm.meta.update(metrics)  # val metrics are over all ranks' pairs, the same on every rank
        # run_dir_of is collective under DDP (log_dir is broadcast): every rank calls it, rank 0 writes
        target = self.hparams.save_to or (run_dir_of(self.trainer).path / "reward_model")
        if self.trainer.is_global_zero:
            recipe = {"module": type(self).__name__, **{k: v for k, v in self.hparams.items() if k != "save_to"}}
            self.rm.save(target, self.tokenizer, policy=str(self.hparams.policy), recipe=recipe)
