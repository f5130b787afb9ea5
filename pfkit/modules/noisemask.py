"""LightningModules for the noise-mask method (orchestration only; the math is in ``pfkit.noise``).

* :class:`NoiseMaskPretrain` — stage 1, the "heated" model: classifier + mask policy trained together
  from one backward per step (manual optimisation, two SGD optimisers: classifier lr 0.1 + StepLR,
  policy lr 0.01 + cosine, momentum 0.9, wd 1e-4, as in the official ``get_optim.py``).
* :class:`PlainClassifier` — the baseline: the same classifier, plain CE on clean images.
* :class:`NoiseMaskFinetune` — stage 2: load the heated classifier from a checkpoint and train on clean
  images, lr 1e-3 with a linear warm-up (official: start factor 0.01, 7 of 10 epochs).

``num_classes`` / ``in_channels`` default to the datamodule's (``ImageNpzDataModule``), so one config
works on the synthetic set and on any MedMNIST npz.

Controls (study arms): ``NoiseMaskPretrain(freeze_policy=True)`` is the random-mask control (the same
Beta noise from an untrained policy and base that never change); ``lr_match=True`` removes the faithful
loss's learning-rate factor from the classifier (``pfkit.noise.reinforce``). ``average_last=k`` on the
plain/fine-tune modules averages the weights of the last k epochs (the paper's ``weight_averaging.py``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from pfkit.noise import Classifier, MaskPolicy, RewardBaseline, apply_mask, reinforce_loss, sample_mask
from pfkit.noise.reinforce import MODES
from pfkit.runs import run_dir_of


class _ClassifierModule(LightningModule):
    """Shared: lazy classifier construction from the datamodule, accuracy logging, evaluation steps."""

    def _build(self) -> None:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        for key in ("num_classes", "in_channels"):
            have = getattr(dm, key, None) if dm is not None else None
            want = self.hparams.get(key)
            if want is None:
                if have is None:
                    raise ValueError(f"{type(self).__name__}: {key} is not set and the datamodule does not "
                                     f"provide it; set model.init_args.{key} in the config")
                self.hparams[key] = int(have)  # saved in checkpoints, so load_from_checkpoint builds eagerly
            elif have is not None and int(have) != int(want):
                raise ValueError(f"{type(self).__name__}: model.{key}={want} but the data has {have}; "
                                 f"remove model.init_args.{key} from the config (it defaults to the data's)")
        if not hasattr(self, "classifier"):
            self._build()

    def _classifier(self) -> Classifier:
        h = self.hparams
        return Classifier(h.num_classes, h.in_channels, arch=h.arch, widths=tuple(h.widths),
                          stem_stride=h.get("stem_stride", 1))

    def _eval_step(self, batch, prefix: str) -> torch.Tensor:
        x, y = batch
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, y)
        self.log(f"{prefix}/loss", loss, on_epoch=True, prog_bar=False, sync_dist=True)
        self.log(f"{prefix}/acc", (logits.argmax(1) == y).float().mean(), on_epoch=True, prog_bar=True,
                 sync_dist=True)
        return loss

    def test_step(self, batch, batch_idx):
        return self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return self.classifier(batch[0] if isinstance(batch, list | tuple) else batch).argmax(1)


# ============================================================================ baseline / fine-tune
class PlainClassifier(_ClassifierModule):
    """Supervised CE on clean images: the baseline (and, with ``checkpoint``, the fine-tuning stage).

    SGD(momentum 0.9, wd 1e-4); optional linear warm-up from ``warmup_start``·lr over ``warmup_epochs``,
    then StepLR(``lr_step``, ``lr_gamma``) — the official ``_normal`` trainer's schedule.

    ``average_last=k`` (> 1): the weights (and BatchNorm statistics) at the end of each of the last k
    epochs are averaged with ``torch.optim.swa_utils.AveragedModel`` and copied into the classifier when
    training ends — the official ``utils/weight_averaging.py`` (mean of the last 3 epochs' state dicts).
    A checkpoint written during training holds the last epoch's weights, not the average.
    """

    def __init__(self, num_classes: int | None = None, in_channels: int | None = None, arch: str = "resnet",
                 widths: tuple[int, ...] = (16, 32, 64, 128), lr: float = 0.1, momentum: float = 0.9,
                 weight_decay: float = 1e-4, lr_step: int = 30, lr_gamma: float = 0.1, warmup_epochs: int = 0,
                 warmup_start: float = 0.01, checkpoint: str | None = None, load_head: bool = True,
                 stem_stride: int = 1, average_last: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self._average = None
        if num_classes is not None and in_channels is not None:
            self._build()

    def _build(self) -> None:
        self.classifier = self._classifier()
        if self.hparams.checkpoint:
            load_classifier(self.classifier, self.hparams.checkpoint, load_head=self.hparams.load_head)

    def forward(self, x):
        return self.classifier(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.classifier(x)
        loss = F.cross_entropy(logits, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, sync_dist=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True,
                 sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        return self._eval_step(batch, "val")

    def on_train_epoch_end(self) -> None:
        k, last = int(self.hparams.average_last or 0), int(self.trainer.max_epochs or 0)
        if k > 1 and self.current_epoch >= last - k:
            from torch.optim.swa_utils import AveragedModel

            if self._average is None:  # a copy with n_averaged = 0: the first update sets it to these weights
                self._average = AveragedModel(self.classifier, use_buffers=True)
            self._average.update_parameters(self.classifier)

    def on_train_end(self) -> None:
        if self._average is not None:  # the mean of the last k epochs replaces the last epoch's weights
            self.classifier.load_state_dict(self._average.module.state_dict())
            self.averaged_epochs = int(self._average.n_averaged)
            self._average = None

    def configure_optimizers(self):
        h = self.hparams
        opt = torch.optim.SGD(self.classifier.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        step = torch.optim.lr_scheduler.StepLR(opt, step_size=h.lr_step, gamma=h.lr_gamma)
        if h.warmup_epochs > 0:
            warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=h.warmup_start, total_iters=h.warmup_epochs)
            sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, step], milestones=[h.warmup_epochs])
        else:
            sched = step
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class NoiseMaskFinetune(PlainClassifier):
    """Stage 2: fine-tune the heated classifier (``checkpoint`` from NoiseMaskPretrain) on clean images."""

    def __init__(self, checkpoint: str, num_classes: int | None = None, in_channels: int | None = None,
                 arch: str = "resnet", widths: tuple[int, ...] = (16, 32, 64, 128), lr: float = 1e-3,
                 momentum: float = 0.9, weight_decay: float = 1e-4, lr_step: int = 30, lr_gamma: float = 0.1,
                 warmup_epochs: int = 2, warmup_start: float = 0.01, load_head: bool = True, stem_stride: int = 1,
                 average_last: int = 0):
        super().__init__(num_classes, in_channels, arch, widths, lr, momentum, weight_decay, lr_step, lr_gamma,
                         warmup_epochs, warmup_start, checkpoint, load_head, stem_stride, average_last)


def load_classifier(classifier: torch.nn.Module, path: str, *, load_head: bool = True) -> None:
    """Load classifier weights from a pfkit Lightning checkpoint (``classifier.*`` keys), a ``{"model": sd}``
    file (the official format) or a bare state dict. ``load_head=False`` keeps the new head (other classes)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found; pass the .ckpt written by the pretraining run "
                                f"(RUN_DIR/checkpoints/last.ckpt)") from None
    except Exception:  # Lightning checkpoints may hold hyper-parameter objects: our own files, trusted
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    sd = ckpt.get("state_dict", ckpt.get("model", ckpt)) if isinstance(ckpt, dict) else ckpt
    if any(k.startswith("classifier.") for k in sd):
        sd = {k[len("classifier."):]: v for k, v in sd.items() if k.startswith("classifier.")}
    if not load_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
    own = classifier.state_dict()
    bad = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    missing = [k for k in own if k not in sd and (load_head or not k.startswith("head."))]
    if bad or missing:
        raise ValueError(f"checkpoint {path} does not fit this classifier (arch/widths/classes differ): "
                         f"shape mismatch {bad[:3]}, missing {missing[:3]}. Use the same arch and widths as the "
                         f"pretraining run; set load_head=False when the number of classes differs.")
    classifier.load_state_dict(sd, strict=load_head)


# ============================================================================== stage 1: pretraining
class NoiseMaskPretrain(_ClassifierModule):
    """Classifier + mask policy, REINFORCE with reward −CE (``mode``: ``faithful`` | ``per_sample``).

    Each step: policy(x) -> Beta log-concentrations [B, g, g] -> sampled mask -> upsample + blur ->
    classifier(x · M) -> per-image CE -> ``pfkit.noise.reinforce_loss`` -> one backward -> both
    optimisers step (nothing alternates, as in the official code).

    Validation logs ``val/acc`` on clean images (what fine-tuning starts from) and ``val/masked_acc``
    under one mask from the unconditional base distribution (the official ``evaluate.py``). Every
    validation epoch, a fixed panel of the first ``panel_size`` validation images is written to
    ``RUN_DIR/masks/epoch_XXX.npz`` (image, alpha, beta, mask, pixel_mask, masked, label, pred), and the
    policy's masks on the first ``stats_size`` validation images are summarised (``val/mask_*``, and one
    row per epoch in the run folder's ``mask_stats`` table): mean Beta entropy, mean and spread of E[m],
    how much of E[m]'s variance is between images, and η² with a permutation p-value by class and by
    modality (``pfkit.noise.metrics.group_dependence``).

    ``freeze_policy=True`` is the random-mask control: the policy and its base are never updated (eval
    mode, no gradient, no optimiser step), so the classifier sees the untrained policy's Beta noise and
    only what the policy gradient would add is missing. ``lr_match=True`` (faithful mode): the classifier
    gets plain ∇CE, the policy the faithful gradient (``pfkit.noise.reinforce``).
    """

    def __init__(self, num_classes: int | None = None, in_channels: int | None = None, arch: str = "resnet",
                 widths: tuple[int, ...] = (16, 32, 64, 128), mode: str = "faithful", grid: int = 8,
                 kernel_size: int = 5, sigma: float = 1.0, policy_widths: tuple[int, ...] = (8, 16, 32, 64),
                 policy_hidden: int = 128, use_base: bool = True, lr: float = 0.1, policy_lr: float = 0.01,
                 momentum: float = 0.9, weight_decay: float = 1e-4, lr_step: int = 30, lr_gamma: float = 0.1,
                 baseline_momentum: float = 0.9, entropy_coef: float = 0.0, clip_grad_norm: float | None = None,
                 panel_size: int = 8, panel_seed: int = 0, freeze_policy: bool = False, lr_match: bool = False,
                 stem_stride: int = 1, policy_stem_stride: int = 1, stats_size: int = 256,
                 stats_resamples: int = 999):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}; choose one of {MODES}")
        if lr_match and mode != "faithful":
            raise ValueError("lr_match=True applies to mode='faithful' only (per_sample's classifier already "
                             "sees plain CE); remove lr_match or set mode: faithful")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.baseline = RewardBaseline(baseline_momentum)
        self._panel: tuple[torch.Tensor, torch.Tensor] | None = None
        self._stats: tuple[torch.Tensor, np.ndarray] | None = None  # fixed images for mask statistics
        self._stats_done = False
        if num_classes is not None and in_channels is not None:
            self._build()

    def _build(self) -> None:
        h = self.hparams
        self.classifier = self._classifier()
        self.policy = MaskPolicy(grid=h.grid, in_channels=h.in_channels, widths=tuple(h.policy_widths),
                                 hidden=h.policy_hidden, use_base=h.use_base, stem_stride=h.policy_stem_stride)
        if h.freeze_policy:
            self.policy.requires_grad_(False)

    def forward(self, x):
        return self.classifier(x)

    # ---------------------------------------------------------------- training
    def training_step(self, batch, batch_idx):
        h = self.hparams
        x, y = batch
        opt_c, opt_p = self.optimizers()
        if h.freeze_policy:
            self.policy.eval()  # no BatchNorm statistics or base update: the policy stays as initialised
        log_a, log_b = self.policy(x)
        mask, logp, dist = sample_mask(log_a, log_b)
        masked, _ = apply_mask(x, mask, sigma=h.sigma, kernel_size=h.kernel_size)
        logits = self.classifier(masked)
        ce = F.cross_entropy(logits, y, reduction="none")
        ent = dist.entropy()
        loss, stats = reinforce_loss(h.mode, logp, ce, baseline=self.baseline, entropy=ent if h.entropy_coef else None,
                                     entropy_coef=h.entropy_coef, lr_match=h.lr_match)
        opt_c.zero_grad()
        opt_p.zero_grad()
        self.manual_backward(loss)
        if h.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.classifier.parameters(), h.clip_grad_norm)
            if not h.freeze_policy:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), h.clip_grad_norm)
        opt_c.step()
        if not h.freeze_policy:
            opt_p.step()
        n = len(y)
        self.log("train/loss", loss.detach(), on_step=True, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train/ce", ce.detach().mean(), on_step=True, on_epoch=True, batch_size=n, prog_bar=True,
                 sync_dist=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), on_step=False, on_epoch=True,
                 batch_size=n, sync_dist=True)
        self.log("train/mask_mean", mask.mean(), on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train/alpha_mean", log_a.detach().exp().mean(), on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)
        self.log("train/beta_mean", log_b.detach().exp().mean(), on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)
        self.log("train/beta_entropy", ent.detach().mean(), on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)
        for k, v in stats.items():
            self.log(f"train/{k}", v, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        return loss.detach()

    def on_train_epoch_end(self) -> None:
        sched_c, sched_p = self.lr_schedulers()
        sched_c.step()
        if not self.hparams.freeze_policy:  # a frozen policy's optimiser never steps: nor does its schedule
            sched_p.step()

    def configure_optimizers(self):
        h = self.hparams
        opt_c = torch.optim.SGD(self.classifier.parameters(), lr=h.lr, momentum=h.momentum,
                                weight_decay=h.weight_decay)
        opt_p = torch.optim.SGD(self.policy.parameters(), lr=h.policy_lr, momentum=h.momentum,
                                weight_decay=h.weight_decay)
        t_max = max(int(self.trainer.max_epochs or 1), 1) if self._trainer is not None else 1
        return [opt_c, opt_p], [torch.optim.lr_scheduler.StepLR(opt_c, h.lr_step, h.lr_gamma),
                                torch.optim.lr_scheduler.CosineAnnealingLR(opt_p, T_max=t_max)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["reward_baseline"] = self.baseline.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "reward_baseline" in checkpoint:
            self.baseline.load_state_dict(checkpoint["reward_baseline"])

    # -------------------------------------------------------------- validation
    def _unconditional_mask(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        if self.hparams.use_base:
            log_a, log_b = self.policy.unconditional()
        else:
            log_a, log_b = self.policy(x)
        return sample_mask(log_a, log_b, seed=seed)[0]

    def validation_step(self, batch, batch_idx):
        h = self.hparams
        x, y = batch
        if batch_idx == 0 and self._panel is None:
            self._panel = (x[: h.panel_size].detach().clone(), y[: h.panel_size].detach().clone())
        if not self._stats_done:
            self._collect_stats_images(x, y)
        self._eval_step(batch, "val")
        mask = self._unconditional_mask(x, seed=h.panel_seed + batch_idx)
        masked, _ = apply_mask(x, mask, sigma=h.sigma, kernel_size=h.kernel_size)
        self.log("val/masked_acc", (self.classifier(masked).argmax(1) == y).float().mean(), on_epoch=True,
                 sync_dist=True)

    def _collect_stats_images(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The first ``stats_size`` validation images of the first real validation epoch (the val loader is
        unshuffled, so they match ``val_modality``'s first entries), kept for every later epoch."""
        have = 0 if self._stats is None else len(self._stats[0])
        take = max(0, min(len(x), self.hparams.stats_size - have))
        if take == 0:
            return
        xs, ys = x[:take].detach().clone(), y[:take].detach().cpu().numpy()
        if self._stats is not None:
            xs, ys = torch.cat([self._stats[0], xs]), np.concatenate([self._stats[1], ys])
        self._stats = (xs, ys)

    @torch.no_grad()
    def mask_statistics(self, x: torch.Tensor, labels: np.ndarray, modality: np.ndarray | None = None, *,
                        seed: int = 0) -> dict[str, float]:
        """What the policy does on images ``x`` (eval mode): entropy, E[m] spread, class/modality dependence."""
        from pfkit.noise.metrics import beta_entropy, expected_mask, group_dependence

        h = self.hparams
        was = self.policy.training
        self.policy.eval()
        log_a, log_b = self.policy(x)
        self.policy.train(was)
        em = expected_mask(log_a, log_b).cpu().numpy()
        between_images = float(((em - em.mean(0)) ** 2).sum())
        everything = float(((em - em.mean()) ** 2).sum())
        out = {"mask_entropy": float(beta_entropy(log_a, log_b)), "mask_mean": float(em.mean()),
               "mask_patch_std": float(em.mean(0).std()),  # spatial structure of the average mask
               "mask_image_std": float(em.std(0).mean()),  # how much E[m] varies between images
               "mask_image_var_share": between_images / max(everything, 1e-30),  # vs spatial variance
               "alpha_mean": float(log_a.exp().mean()), "beta_mean": float(log_b.exp().mean())}
        for name, groups in (("class", labels), ("modality", modality)):
            if groups is None:
                continue
            d = group_dependence(em, groups, n_resamples=h.stats_resamples, seed=seed)
            out[f"mask_{name}_eta2"], out[f"mask_{name}_p"] = d["eta2"], d["p"]
        return out

    def _stats_modality(self) -> np.ndarray | None:
        dm = getattr(self.trainer, "datamodule", None)
        mod = dm.modality("val") if dm is not None and hasattr(dm, "modality") else None
        return None if mod is None else np.asarray(mod)[: len(self._stats[1])]

    def on_validation_epoch_end(self) -> None:
        if self._trainer is not None and self.trainer.sanity_checking:
            self._stats = None  # sanity batches are collected again by the first real epoch
            return
        self._stats_done = self._stats is not None
        if self._panel is None or self._trainer is None:
            return
        h = self.hparams
        row = None
        if self._stats is not None and len(self._stats[1]) >= 2:
            row = self.mask_statistics(self._stats[0], self._stats[1], self._stats_modality(),
                                       seed=h.panel_seed + int(self.current_epoch))
            for k, v in row.items():
                self.log(f"val/{k}", v, on_epoch=True, sync_dist=False, rank_zero_only=True)
        x, y = self._panel
        log_a, log_b = self.policy(x)  # eval mode here: BN running stats, base not updated
        mask, _, _ = sample_mask(log_a, log_b, seed=h.panel_seed)
        masked, pix = apply_mask(x, mask, sigma=h.sigma, kernel_size=h.kernel_size)
        pred = self.classifier(masked).argmax(1)
        dm = getattr(self.trainer, "datamodule", None)
        mean, std = float(getattr(dm, "mean", 0.0)), float(getattr(dm, "std", 1.0))

        def img(t):  # back to [0, 1] pixel space, N×H×W (grey) or N×H×W×C
            a = (t.detach().float().cpu() * std + mean).clamp(0, 1).numpy()
            return a[:, 0] if a.shape[1] == 1 else np.moveaxis(a, 1, -1)

        run = run_dir_of(self.trainer)  # collective under DDP (log_dir is broadcast): every rank calls it
        if not self.trainer.is_global_zero:  # same panel, same weights on every rank: one writer
            return
        if row is not None:
            run.append("mask_stats", [{"epoch": int(self.current_epoch), **row}], step=int(self.current_epoch))
        run.save_masks(
            int(self.current_epoch), image=img(x), alpha=log_a.exp().detach().cpu().numpy(),
            beta=log_b.exp().detach().cpu().numpy(), mask=mask.cpu().numpy(),
            pixel_mask=pix[:, 0].detach().cpu().numpy(), masked=img(masked), label=y.cpu().numpy(),
            pred=pred.cpu().numpy())
