"""Reward model: the policy's backbone + a scalar head, trained with the Bradley-Terry loss.

As in the PF-PPO paper (and OpenRLHF), the reward model is initialised from the SFT policy with an added
output layer, and trained on (chosen, rejected) pairs to maximise log sigma(R(chosen) - R(rejected)); here
the pairs are policy samples labelled by unit tests (``pfkit.data.preference``). The same
:class:`ScalarHeadModel` is PF-PPO's critic (initialised from the reward model, as in the authors' code):
it outputs one scalar per position, the reward is the one at the last token.

``pfkit fit -c configs/reward_codegen.yaml`` trains the embedded default; the run folder gets
``reward_model/`` (loadable with :meth:`ScalarHeadModel.load`) and ``val/acc`` (held-out pairwise accuracy)
in metrics.csv. Rewards are normalised with a fixed mean/std of the training responses' scores stored with
the model (the authors' "normalize_reward" with fixed statistics).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from pfkit import distributed as dist
from pfkit.data.preference import encode
from pfkit.runs import run_dir_of

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_RM = ROOT / "data" / "reward"


def policy_fingerprint(model) -> str:
    """A short hash of a model's weights, to check that a saved reward model belongs to a policy."""
    h = hashlib.sha1()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]


class ScalarHeadModel(nn.Module):
    """A transformer body (the policy's ``base_model``) with a linear head giving one scalar per position.

    Optional **likelihood term** (``lm_head`` given): the reward becomes
    ``head(h_last) + w * sum_t log p(y_t | x, y_<t)`` over the response tokens, with the log-probabilities
    from the body's own LM head and a learned scalar ``w`` (initialised to 1). Bradley-Terry training then
    also sharpens the response likelihood, as DPO's implicit reward does. Why: a linear head on the last
    token of a ~1 M-parameter body does not learn to compare the docstring's constants with the code's
    from a few thousand pairs (measured: held-out pair accuracy 0.46-0.54 with 2.7k-5.7k pairs), while the
    SFT policy's own likelihood already ranks 62% of held-out pairs correctly. Real-scale reward models
    do not need it (``likelihood_term=False``, the plain value-head RM).
    """

    def __init__(self, backbone: nn.Module, meta: dict | None = None, lm_head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("reward_mean", torch.zeros(()))
        self.register_buffer("reward_std", torch.ones(()))
        self.meta = dict(meta or {})
        self.lm_head = lm_head
        if lm_head is not None:
            if getattr(backbone.config, "tie_word_embeddings", False):
                lm_head.weight = backbone.get_input_embeddings().weight
            self.likelihood_weight = nn.Parameter(torch.ones(()))
            self.meta["likelihood_term"] = True

    @property
    def config(self):
        return self.backbone.config

    @property
    def has_likelihood_term(self) -> bool:
        return self.lm_head is not None

    @classmethod
    def from_policy(cls, policy: nn.Module, likelihood_term: bool = False) -> ScalarHeadModel:
        """Copy the policy's body (and, with ``likelihood_term``, its LM head) and add a fresh scalar head."""
        lm_head = copy.deepcopy(policy.get_output_embeddings()) if likelihood_term else None
        m = cls(copy.deepcopy(policy.base_model), meta={"policy_fingerprint": policy_fingerprint(policy)},
                lm_head=lm_head)
        return m.to(next(policy.parameters()).dtype).train()

    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos).last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Raw scalar ``[B, L]`` at every position (positions from the mask, so left padding is harmless)."""
        return self.head(self._hidden(input_ids, attention_mask)).squeeze(-1).float()

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
              response_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Raw reward ``[B]``: the scalar at each row's last attended token (+ the likelihood term, which
        needs ``response_mask``: 1 on the response tokens, as :func:`pfkit.data.preference.encode` gives)."""
        h = self._hidden(input_ids, attention_mask)
        L = attention_mask.shape[1]
        last = (attention_mask.long() * torch.arange(L, device=attention_mask.device)).argmax(-1)
        h_last = h.gather(1, last[:, None, None].expand(-1, 1, h.shape[-1])).squeeze(1)
        reward = self.head(h_last).squeeze(-1).float()
        if self.lm_head is not None:
            if response_mask is None:
                raise ValueError("this reward model has a likelihood term: pass response_mask (1 on response "
                                 "tokens), e.g. from pfkit.data.preference.encode, or use score_texts")
            logp = torch.log_softmax(self.lm_head(h[:, :-1]).float(), -1)
            logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
            reward = reward + self.likelihood_weight.float() * (logp * response_mask[:, 1:].float()).sum(-1)
        return reward

    def normalize(self, raw: torch.Tensor, clip: float | None = 10.0) -> torch.Tensor:
        r = (raw - self.reward_mean) / self.reward_std
        return r.clamp(-clip, clip) if clip is not None else r

    @torch.no_grad()
    def score_texts(self, tokenizer, prompts: Sequence[str], responses: Sequence[str], *, normalize: bool = True,
                    batch_size: int = 64, max_length: int = 384) -> torch.Tensor:
        """Rewards ``[B]`` of (prompt, response) texts, in eval mode, normalised unless ``normalize=False``."""
        was = self.training
        self.eval()
        device = next(self.parameters()).device
        out = []
        try:
            for i in range(0, len(prompts), batch_size):
                enc = encode(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size], max_length)
                out.append(self.score(enc["input_ids"].to(device), enc["attention_mask"].to(device),
                                      enc["response_mask"].to(device)).cpu())
        finally:
            self.train(was)
        raw = torch.cat(out) if out else torch.zeros(0)
        return self.normalize(raw) if normalize else raw

    def as_critic(self) -> ScalarHeadModel:
        """A trainable copy whose head outputs *normalised* rewards (mean/std folded into the head), so the
        critic's initial value at the last token is the normalised reward it will be trained against.
        A likelihood term is not a per-position value, so the critic keeps only the body and head: its
        initial values then track the head's part of the reward, not the whole of it."""
        critic = copy.deepcopy(self)
        if critic.lm_head is not None:
            critic.lm_head = None
            del critic.likelihood_weight
            critic.meta.pop("likelihood_term", None)
        with torch.no_grad():
            critic.head.weight /= self.reward_std
            critic.head.bias.copy_((self.head.bias - self.reward_mean) / self.reward_std)
            critic.reward_mean.zero_()
            critic.reward_std.fill_(1.0)
        return critic

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path, tokenizer=None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.config.save_pretrained(path)
        torch.save({k: v.detach().cpu() for k, v in self.state_dict().items()}, path / "reward_model.pt")
        (path / "reward_meta.json").write_text(json.dumps(self.meta, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(path)
        return path

    @classmethod
    def load(cls, path: str | Path = "embedded") -> ScalarHeadModel:
        """From a folder written by :meth:`save`; ``"embedded"`` = data/reward (shipped with the kit)."""
        from transformers import AutoConfig, AutoModel

        folder = EMBEDDED_RM if str(path) == "embedded" else Path(path)
        if not (folder / "reward_model.pt").is_file() or not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a saved reward model (needs config.json and reward_model.pt); "
                                    f"train one with `pfkit fit -c configs/reward_codegen.yaml`")
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        meta = json.loads((folder / "reward_meta.json").read_text()) if (folder / "reward_meta.json").is_file() else {}
        state = torch.load(folder / "reward_model.pt", map_location="cpu", weights_only=True)
        lm_head = None
        if meta.get("likelihood_term"):
            lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias="lm_head.bias" in state)
        model = cls(AutoModel.from_config(config), meta=meta, lm_head=lm_head)
        model.load_state_dict(state)
        return model.eval()


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigma(R(chosen) - R(rejected)), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


class RewardModule(LightningModule):
    """Bradley-Terry training of a :class:`ScalarHeadModel` initialised from the policy at ``policy``.

    Logs train/loss, train/acc, val/loss and val/acc (pairwise accuracy on held-out prompts' pairs). At the
    end of fit, sets the reward normalisation from the training samples' scores and saves the model to
    ``RUN_DIR/reward_model`` (or ``save_to``).

    DDP: every rank builds the same pairs (checked at setup: the datamodule samples/reads them on each
    rank), Lightning's DistributedSampler gives each rank its share; val/loss and val/acc are sums over
    *all* ranks' held-out pairs, each counted once (the sampler's padding duplicates are left out); the
    calibration scores are split over the ranks and gathered; rank 0 writes the model.
    """

    def __init__(self, policy: str = "embedded", lr: float = 1e-4, weight_decay: float = 0.0,
                 warmup_steps: int = 10, save_to: str | None = None, likelihood_term: bool = False):
        super().__init__()
        self.save_hyperparameters()
        from pfkit import models

        model, self.tokenizer = models.load_policy(policy)
        self.rm = ScalarHeadModel.from_policy(model, likelihood_term=likelihood_term)
        self._val = []

    @classmethod
    def from_models(cls, policy_model, tokenizer, **kw) -> RewardModule:
        """Build around an in-memory policy (tests, demos) instead of loading one from a path."""
        self = cls.__new__(cls)
        LightningModule.__init__(self)
        self.save_hyperparameters({"policy": "<in memory>", "lr": 1e-4, "weight_decay": 0.0, "warmup_steps": 10,
                                   "save_to": None, "likelihood_term": False, **kw})
        self.tokenizer = tokenizer
        self.rm = ScalarHeadModel.from_policy(policy_model, likelihood_term=self.hparams.likelihood_term)
        self._val = []
        return self

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is None:
            dm.tokenizer = self.tokenizer
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
        warm = max(1, self.hparams.warmup_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
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
            self.log("val/loss", float(tot[0] / tot[2]))
            self.log("val/acc", float(tot[1] / tot[2]), prog_bar=True)

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
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "train_samples", None) is not None and len(dm.train_samples):
            self.calibrate(list(dm.train_samples["prompt"]), list(dm.train_samples["response"]))
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        self.rm.meta.update(metrics)  # val metrics are over all ranks' pairs, the same on every rank
        # run_dir_of is collective under DDP (log_dir is broadcast): every rank calls it, rank 0 writes
        target = self.hparams.save_to or (run_dir_of(self.trainer).path / "reward_model")
        if self.trainer.is_global_zero:
            self.rm.save(target, self.tokenizer)
