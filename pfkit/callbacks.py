"""Lightning callbacks: real-scale switches for configs/gpu/ (no module code changes), and the run folder's
logger and history keeping that ``pfkit fit`` adds to every run."""

from __future__ import annotations

import csv
import os
import warnings

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class GradientCheckpointing(Callback):
    """Turn on activation (gradient) checkpointing in every trainable Hugging Face model of the module.

    Trades ~30% more compute for activations that no longer grow with depth, which is what lets a 1.5-7B
    policy train with long responses on one GPU's memory. ``use_reentrant=False`` is the form that works
    with DDP/FSDP and with inputs that do not require grad. Sampling runs the model in eval mode, where
    Hugging Face models keep their KV cache, so rollouts are not slowed. (GRPO: set ``shared_prefix: false``,
    since checkpointed training-mode forwards return no cache.)
    """

    def __init__(self, use_reentrant: bool = False):
        self.use_reentrant = use_reentrant
        self.enabled: list[str] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        try:
            from transformers import PreTrainedModel
        except ImportError:  # pragma: no cover - transformers is a dependency
            return
        for name, module in pl_module.named_modules():
            if (isinstance(module, PreTrainedModel)
                    and getattr(module, "supports_gradient_checkpointing", False)
                    and any(p.requires_grad for p in module.parameters())
                    and not getattr(module, "is_gradient_checkpointing", False)):
                kwargs = {"use_reentrant": self.use_reentrant}
                module.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                self.enabled.append(name or "<root>")


# ------------------------------------------------------------------------------------ resume keeps history
class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that a resumed run keeps ``metrics.csv``: Lightning deletes it when
    the writer starts, which erased a resumed run's history. The rows the resumed run logs again (steps at
    or after its first new row's step: the killed run's steps after the checkpoint) replace the old ones."""

    def __init__(self, log_dir: str, resume: bool):
        self._resume = resume
        self._trim = resume
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        if not self._resume:
            # the run folder holds config.yaml and tables too, so Lightning's "exists and is not empty"
            # warning came on every run; only an earlier run's metrics.csv is worth a word (it is replaced)
            if os.path.isfile(self.metrics_file_path):
                warnings.warn(f"{self.metrics_file_path} from an earlier run in this folder is replaced; pass "
                              f"--ckpt_path to resume that run instead, or --run_dir to write elsewhere",
                              stacklevel=2)
                os.remove(self.metrics_file_path)
            return None
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(csv.DictReader(f).fieldnames or [])

    def save(self) -> None:
        if self._trim and self.metrics and os.path.isfile(self.metrics_file_path):  # the first save only
            first = min(m["step"] for m in self.metrics)
            with open(self.metrics_file_path, newline="") as f:
                old = [r for r in csv.DictReader(f) if r.get("step") in (None, "") or float(r["step"]) < first]
            keys = sorted(set(self.metrics_keys).union(*self.metrics))
            self.metrics_keys = keys
            with open(self.metrics_file_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=keys)
                w.writeheader()
                w.writerows(old)
        self._trim = self._trim and not self.metrics  # done once there were rows to save
        super().save()


class RunLogger(CSVLogger):
    """The run folder's CSV logger: ``metrics.csv`` straight in the run folder, every row written as it is
    logged (a killed run keeps all it logged, not only up to the last 100-step flush), and kept when the run
    resumes (``resume=True``: ``pfkit fit --ckpt_path`` into the same folder)."""

    def __init__(self, save_dir: str, resume: bool = False):
        super().__init__(save_dir=save_dir, name="", version="", flush_logs_every_n_steps=1)
        self._resume = resume

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._resume)
        return self._experiment


class RunHistory(Callback):
    """Resume keeps the run's tables whole, without repeated steps.

    A checkpoint records which part files each table of the run folder (``rollouts.parquet/``,
    ``difficulty.parquet/``, ...) had when it was saved; resuming from it moves the parts written after it
    (steps the killed run did after its last checkpoint, which the resumed run does again) into the table's
    ``_superseded/`` folder, which readers skip (pyarrow ignores names starting with "_"): nothing is deleted.
    """

    def __init__(self):
        self.run = None
        self._restored: dict | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from pfkit.runs import run_dir_of

        self.run = run_dir_of(trainer)  # collective under DDP: every rank calls it

    def _tables(self):
        return sorted(p for p in self.run.path.glob("*.parquet") if p.is_dir()) if self.run else []

    def state_dict(self) -> dict:
        return {"parts": {t.name: sorted(p.name for p in t.glob("part-*.parquet")) for t in self._tables()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restored = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restored is None or not trainer.is_global_zero:
            return
        kept = self._restored.get("parts", {})
        for table in self._tables():
            later = [p for p in table.glob("part-*.parquet") if p.name not in set(kept.get(table.name, []))]
            for p in later:
                (table / "_superseded").mkdir(exist_ok=True)
                os.replace(p, table / "_superseded" / p.name)
        self._restored = None


class RunSummary(Callback):
    """pfkit's own lines for a training phase, in place of Lightning's model-summary table: what is trained
    (trainable / total parameters) and into which run folder when it starts, how many steps it took and
    what it wrote when it ends. Rank 0 only. Off inside a study job (``pfkit.study.execute``): the study
    prints one line per run instead, and a worker's print would break the study's progress bar."""

    silenced = False  # class-wide: set by the study runner around a job

    def __init__(self):
        self._t0 = 0.0
        self.run = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        from pfkit.runs import run_dir_of

        self.run = run_dir_of(trainer)  # collective under DDP: every rank calls it

    def on_train_start(self, trainer, pl_module) -> None:  # after a checkpoint's steps are restored
        import time

        self._t0 = time.perf_counter()
        if not trainer.is_global_zero or RunSummary.silenced:
            return
        params = list(pl_module.parameters())
        total = sum(p.numel() for p in params)
        trainable = sum(p.numel() for p in params if p.requires_grad)
        resumed = f", resumed at step {trainer.global_step} from {trainer.ckpt_path}" if trainer.ckpt_path else ""
        print(f"[pfkit] {type(pl_module).__name__}: {trainable / 1e6:.2f} M trainable of {total / 1e6:.2f} M "
              f"parameters, up to {trainer.max_steps if trainer.max_steps > 0 else trainer.max_epochs} "
              f"{'steps' if trainer.max_steps > 0 else 'epochs'}{resumed} -> {self.run.path}", flush=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        import time

        if not trainer.is_global_zero or RunSummary.silenced:
            return
        path = self.run.path
        wrote = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir()
                       if not p.name.startswith(".") and p.name != "hparams.yaml") if path.is_dir() else []
        print(f"[pfkit] {type(pl_module).__name__}: {trainer.global_step} steps in "
              f"{time.perf_counter() - self._t0:.0f} s; wrote {', '.join(wrote) or 'nothing'} in {path}", flush=True)
