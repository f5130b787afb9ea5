"""Prompt sets with a verifier, for GRPO: the embedded code task or any prompts + a reward function.

GRPO does not iterate over a dataset the usual way: the *sampler* (``pfkit.data.samplers``) picks which
prompts get rolled out each step. So this datamodule's train loader only yields step numbers (one batch
= one GRPO step), and the module reads the prompts and the verifier from ``datamodule.train_set`` /
``datamodule.val_set`` (``PromptSet``).

A ``PromptSet`` scores completions in bulk: ``score(indices, completions) -> rewards in [0, 1]``.
* Code task: the program ``prompt + completion`` runs against the problem's unit tests in
  ``pfkit.sandbox`` (binary reward: all tests pass). Repeated (problem, completion) pairs are cached,
  since a GRPO group of a small policy often holds duplicates.
* Anything else: ``verifier(prompt, completion) -> float`` (or ``verifier(prompt, completion, record)``
  for JSONL rows carrying e.g. an ``answer`` field), given as a Python callable or a ``"module:function"``
  path on the command line.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from pfkit.data._loader import ResumableLoader
from pfkit.rollout import CODE_STOPS


@dataclass
class PromptSet:
    """Prompts, their ids, and a bulk scorer ``score(indices, completions) -> list[float]`` in [0, 1]."""

    ids: list[str]
    prompts: list[str]
    scorer: Callable[[Sequence[int], Sequence[str]], Sequence[float]]
    stop: tuple = ()
    problems: list | None = None          # CodeProblem records for the code task
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def score(self, indices: Sequence[int], completions: Sequence[str]) -> list[float]:
        if len(indices) != len(completions):
            raise ValueError(f"{len(indices)} prompt indices but {len(completions)} completions")
        out = [float(r) for r in self.scorer(list(indices), list(completions))]
        bad = [r for r in out if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"verifier returned rewards outside [0, 1] (e.g. {bad[0]}); GRPO's samplers "
                             "track success probabilities, so rescale the verifier's output to [0, 1]")
        return out


def code_prompt_set(problems: Sequence, *, timeout: float = 2.0, cache_size: int = 200_000, **sandbox_kw) -> PromptSet:
    """The code task: reward 1.0 iff ``prompt + completion`` passes the problem's tests in the sandbox."""
    problems = list(problems)
    cache: dict[tuple[str, str], float] = {}

    def scorer(indices, completions):
        from pfkit.sandbox import check_completions

        keys = [(problems[i].task_id, c) for i, c in zip(indices, completions)]
        todo = {}
        for k, i, c in zip(keys, indices, completions):
            if k not in cache and k not in todo:
                todo[k] = (problems[i], c)
        if todo:
            verdicts = check_completions([p for p, _ in todo.values()], [c for _, c in todo.values()],
                                         timeout=timeout, **sandbox_kw)
            if len(cache) + len(todo) > cache_size:
                cache.clear()
            for k, v in zip(todo, verdicts):
                cache[k] = 1.0 if v.passed else 0.0
        return [cache[k] for k in keys]

    return PromptSet(ids=[p.task_id for p in problems], prompts=[p.prompt for p in problems], scorer=scorer,
                     stop=CODE_STOPS, problems=problems)


def verifier_prompt_set(prompts: Sequence[str], verifier: Callable, *, ids: Sequence[str] | None = None,
                        records: Sequence[dict] | None = None, stop: Sequence = ()) -> PromptSet:
    """Any prompts + ``verifier(prompt, completion)`` (or ``(prompt, completion, record)``) -> [0, 1]."""
    prompts = list(prompts)
    records = list(records) if records is not None else [{"prompt": p} for p in prompts]
    try:
        n_params = len(inspect.signature(verifier).parameters)
    except (TypeError, ValueError):
        n_params = 2
    with_record = n_params >= 3

    def scorer(indices, completions):
        if with_record:
            return [verifier(prompts[i], c, records[i]) for i, c in zip(indices, completions)]
        return [verifier(prompts[i], c) for i, c in zip(indices, completions)]

    return PromptSet(ids=list(ids) if ids is not None else [str(i) for i in range(len(prompts))], prompts=prompts,
                     scorer=scorer, stop=tuple(stop))


def load_callable(path: str) -> Callable:
    """``"package.module:function"`` -> the function (clear error if it is not there)."""
    if ":" not in path:
        raise ValueError(f"verifier {path!r} must look like 'package.module:function'")
    mod_name, fn_name = path.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load verifier {path!r}: {e}; check the module is importable and defines "
                         f"{fn_name}") from e
    if not callable(fn):
        raise ValueError(f"verifier {path!r} is not callable")
    return fn


def _read_jsonl(path: str) -> list[dict]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"prompts file {str(p)!r} not found; pass a JSONL file with one {{\"prompt\": ...}} per line")
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            if "prompt" not in row:
                raise ValueError(f"{p}:{n} has no 'prompt' field; every JSONL row needs one")
            rows.append(row)
    return rows


class _Steps(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


class PromptDataModule(LightningDataModule):
    """Training/held-out prompt sets for GRPO.

    Args:
        task: ``"codegen"`` (the embedded code task) or ``"jsonl"`` (``prompts_file`` + ``verifier``).
        n_train: number of training prompts (the set the samplers choose from).
        n_val: number of held-out prompts for validation pass rate.
        seed: which problems (code task) and which subset of a JSONL file are used.
        prompts_file: JSONL with a ``prompt`` field per row (``task="jsonl"``); ``val_file`` optional,
            else the last ``n_val`` rows are held out.
        verifier: ``"module:function"``, called as ``f(prompt, completion[, record]) -> float in [0, 1]``.
        steps_per_epoch: GRPO steps per Lightning epoch (validation runs at each epoch end).
    """

    def __init__(self, task: str = "codegen", n_train: int = 64, n_val: int = 64, seed: int = 0,
                 prompts_file: str | None = None, val_file: str | None = None, verifier: str | None = None,
                 steps_per_epoch: int = 10, sandbox_timeout: float = 2.0):
        super().__init__()
        if task not in ("codegen", "jsonl"):
            raise ValueError(f"task must be 'codegen' or 'jsonl', got {task!r}")
        if task == "jsonl" and (prompts_file is None or verifier is None):
            raise ValueError("task='jsonl' needs prompts_file=PATH.jsonl and verifier='module:function'")
        self.save_hyperparameters()
        self.train_set: PromptSet | None = None
        self.val_set: PromptSet | None = None

    @classmethod
    def from_sets(cls, train_set: PromptSet, val_set: PromptSet | None = None, steps_per_epoch: int = 10):
        """A datamodule over ready-made prompt sets (Python API: benchmarks, notebooks, tests)."""
        dm = cls(steps_per_epoch=steps_per_epoch)
        dm.train_set, dm.val_set = train_set, val_set
        return dm

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.task == "codegen":
            from pfkit.tasks import codegen

            sp = codegen.splits(seed=0)
            train = list(sp["train"])
            random.Random(h.seed).shuffle(train)
            self.train_set = code_prompt_set(train[: h.n_train], timeout=h.sandbox_timeout)
            self.val_set = code_prompt_set(list(sp["val"])[: h.n_val], timeout=h.sandbox_timeout)
        else:
            fn = load_callable(h.verifier)
            rows = _read_jsonl(h.prompts_file)
            val_rows = _read_jsonl(h.val_file) if h.val_file else rows[len(rows) - h.n_val:] if h.n_val else []
            train_rows = rows if h.val_file else rows[: len(rows) - h.n_val]
            random.Random(h.seed).shuffle(train_rows)
            train_rows = train_rows[: h.n_train]
            if not train_rows:
                raise ValueError(f"{h.prompts_file} leaves no training prompts after holding out n_val={h.n_val}")
            mk = lambda rs: verifier_prompt_set([r["prompt"] for r in rs], fn, records=rs,  # noqa: E731
                                                ids=[str(r.get("id", i)) for i, r in enumerate(rs)])
            self.train_set, self.val_set = mk(train_rows), (mk(val_rows) if val_rows else None)

    def train_dataloader(self) -> DataLoader:
        # under DDP Lightning splits this over ranks: scale it so an epoch is steps_per_epoch steps on each
        world = self.trainer.world_size if self.trainer is not None else 1
        return ResumableLoader(_Steps(self.hparams.steps_per_epoch * world), batch_size=1)  # exact resume

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(1), batch_size=1)

