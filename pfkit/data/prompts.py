"""Prompt sets with a verifier: the one datamodule GRPO (and PF-PPO) read their prompts from.

Sources, chosen by ``task``:

* ``codegen``: the embedded code task (binary reward: ``prompt + completion`` passes the problem's unit
  tests in ``pfkit.sandbox``).
* ``file``: your own prompts, a local ``.jsonl`` / ``.parquet`` file or a ``datasets`` folder written by
  ``save_to_disk`` (``pfkit.tasks.verifiers.load_records``), columns mapped in config (``columns:
  {prompt: question, answer: solution, image: image_path, id: uid}``), scored by a verifier chosen in
  config: ``exact``, ``numeric`` (``verifier_options: {rel_tol: 1e-3}``), ``math`` (math-verify), ``code``
  (the sandbox; rows carry ``tests`` and optionally ``entry_point``), or ``"module:function"`` called as
  ``f(prompt, completion[, record]) -> float in [0, 1]``. ``jsonl`` is the old name of ``file``.

GRPO does not iterate over a dataset the usual way: the *sampler* (``pfkit.data.samplers``) picks which
prompts get rolled out each step, by index into ``train_set``. So the train loader only yields step
numbers (one batch = one GRPO step), and the module reads ``datamodule.train_set`` / ``val_set``
(:class:`PromptSet`). PF-PPO iterates over problems in batches: :class:`CodePromptDataModule` is the same
prompt set with that loader.

Prompt ids (``PromptSet.ids``, the ``prompt_id`` of rollouts.parquet / difficulty.parquet) are the
problem's ``task_id`` on the code task and the ``id`` column (else the file's row number) for a file, so
they do not change with ``n_train``, ``seed`` or the order the sampler visits them in.
"""

from __future__ import annotations

import importlib
import inspect
import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from pfkit.data._loader import ResumableLoader
from pfkit.rollout import CODE_STOPS
from pfkit.tasks.verifiers import VERIFIERS, VerifierError, build_verifier, check_answers, load_records

TASKS = ("codegen", "file")


@dataclass
class PromptSet:
    """Prompts, their ids, and a bulk scorer ``score(indices, completions) -> list[float]`` in [0, 1].

    ``images[i]`` is prompt i's image path (None: text only; the whole list is None for a text set);
    ``records`` are the source rows (pfkit's field names) a verifier reads the reference from.
    """

    ids: list[str]
    prompts: list[str]
    scorer: Callable[[Sequence[int], Sequence[str]], Sequence[float]]
    stop: tuple = ()
    problems: list | None = None          # CodeProblem records when the reward is the unit-test score
    meta: dict = field(default_factory=dict)
    images: list | None = None
    records: list | None = None

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


def code_prompt_set(problems: Sequence, *, timeout: float = 2.0, cache_size: int = 200_000,
                    prompts: Sequence[str] | None = None, **sandbox_kw) -> PromptSet:
    """The code task: reward 1.0 iff ``prompt + completion`` passes the problem's tests in the sandbox.

    ``prompts`` (default: each problem's own prompt) is what the policy sees, e.g. a templated prompt;
    the program is always ``problem.prompt + completion``.
    """
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

    return PromptSet(ids=[p.task_id for p in problems],
                     prompts=list(prompts) if prompts is not None else [p.prompt for p in problems],
                     scorer=scorer, stop=CODE_STOPS, problems=problems)


def verifier_prompt_set(prompts: Sequence[str], verifier: Callable, *, ids: Sequence[str] | None = None,
                        records: Sequence[dict] | None = None, stop: Sequence = (),
                        images: Sequence | None = None) -> PromptSet:
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
                     scorer=scorer, stop=tuple(stop), records=records,
                     images=list(images) if images is not None else None)


def load_callable(path: str) -> Callable:
    """``"package.module:function"`` -> the function (clear error if it is not there)."""
    if ":" not in path:
        raise VerifierError(f"verifier {path!r} must be one of {', '.join(VERIFIERS)} or look like "
                            "'package.module:function'")
    mod_name, fn_name = path.split(":", 1)
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as e:
        raise VerifierError(f"cannot load verifier {path!r}: {e}; check the module is importable and defines "
                            f"{fn_name}") from None
    if not callable(fn):
        raise VerifierError(f"verifier {path!r} is not callable")
    return fn


def _render(template: str | None, rec: Mapping, source: str, row: int) -> str:
    """The text the policy sees: ``template.format(**record)`` (``{prompt}``, ``{answer}``, any column)."""
    if template is None:
        return str(rec["prompt"])
    try:
        return template.format_map(rec)
    except (KeyError, IndexError, ValueError) as e:
        raise VerifierError(f"template {template!r} cannot be filled from {source} row {row} "
                            f"({type(e).__name__}: {e}); use {{prompt}} or another column name") from None


def file_prompt_set(records: Sequence[dict], verifier: str, *, verifier_options: Mapping | None = None,
                    template: str | None = None, stop: Sequence | None = None, source: str = "prompts",
                    sandbox_timeout: float = 2.0) -> PromptSet:
    """Records from :func:`~pfkit.tasks.verifiers.load_records` + a verifier named in config.

    Every reference is checked first (:func:`~pfkit.tasks.verifiers.check_answers`), so an answer the
    verifier cannot read fails here, naming the row, not in the middle of training.
    """
    records = [dict(r) for r in records]
    options = dict(verifier_options or {})
    ids = [str(r.get("id", i)) for i, r in enumerate(records)]
    prompts = [_render(template, r, source, r.get("_row", i)) for i, r in enumerate(records)]
    images = [r.get("image") for r in records] if any(r.get("image") is not None for r in records) else None
    if verifier == "code":
        from pfkit.tasks import CodeProblem

        check_answers(records, "code", source)
        problems = [CodeProblem(task_id=i, prompt=str(r["prompt"]), tests=str(r["tests"]),
                                entry_point=_entry_point(r), reference="") for i, r in zip(ids, records)]
        ps = code_prompt_set(problems, prompts=prompts, timeout=options.pop("timeout", sandbox_timeout), **options)
        ps.stop = tuple(stop) if stop is not None else CODE_STOPS
        ps.records, ps.images = records, images
        return ps
    if verifier in VERIFIERS:
        check_answers(records, verifier, source)
        fn = build_verifier(verifier, **options)
    else:
        fn = load_callable(verifier)
        if options:
            fn = _with_options(fn, options)
    return verifier_prompt_set(prompts, fn, ids=ids, records=records, stop=tuple(stop or ()), images=images)


def _entry_point(rec: Mapping):
    ep = rec.get("entry_point")
    return None if ep is None or (isinstance(ep, float) and math.isnan(ep)) else str(ep)


def _with_options(fn: Callable, options: Mapping) -> Callable:
    def verifier(prompt, completion, record):
        return fn(prompt, completion, record, **options)
    return verifier


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
        task: ``"codegen"`` (the embedded code task) or ``"file"`` (``prompts_file`` + ``verifier``;
            ``"jsonl"`` is its old name).
        n_train: number of training prompts (the set the samplers choose from).
        n_val: number of held-out prompts for validation pass rate.
        seed: which problems (code task) and which subset of a file are used.
        prompts_file: ``.jsonl`` / ``.parquet`` file or ``datasets`` save_to_disk folder; ``val_file``
            optional, else the last ``n_val`` rows are held out (before shuffling, so they never train).
        columns: pfkit field -> the file's column, for ``prompt``, ``answer``, ``image``, ``id``, ``tests``,
            ``entry_point`` (unmapped fields are read under their own names).
        verifier: ``exact`` | ``numeric`` | ``math`` | ``code`` | ``"module:function"``.
        verifier_options: keyword arguments of the verifier (``numeric``: ``rel_tol``, ``abs_tol``;
            ``code``: ``timeout``; a ``module:function`` gets them as keywords).
        template: what the policy sees, e.g. ``"Q: {prompt}\\nA:"`` (any column by name; default the prompt).
        stop: stop strings for sampling (default: the code stops for code, none otherwise).
        steps_per_epoch: GRPO steps per Lightning epoch (validation runs at each epoch end).
        sandbox_timeout: seconds per program on the code task / code verifier.
    """

    def __init__(self, task: str = "codegen", n_train: int = 64, n_val: int = 64, seed: int = 0,
                 prompts_file: str | None = None, val_file: str | None = None, verifier: str | None = None,
                 verifier_options: dict | None = None, columns: dict | None = None, template: str | None = None,
                 stop: list[str] | None = None, steps_per_epoch: int = 10, sandbox_timeout: float = 2.0):
        super().__init__()
        task = "file" if task == "jsonl" else task
        if task not in TASKS:
            raise VerifierError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
        if task == "file" and prompts_file is None:
            raise VerifierError("task='file' needs prompts_file=PATH (.jsonl, .parquet or a datasets "
                                "save_to_disk folder) and a verifier (exact | numeric | math | code | module:function)")
        if task == "file" and verifier is None:
            raise VerifierError(f"task='file' needs a verifier: one of {', '.join(VERIFIERS)} or "
                                "'module:function'")
        self.save_hyperparameters()
        self.hparams.task = task
        self.train_set: PromptSet | None = None
        self.val_set: PromptSet | None = None

    @classmethod
    def from_sets(cls, train_set: PromptSet, val_set: PromptSet | None = None, steps_per_epoch: int = 10):
        """A datamodule over ready-made prompt sets (Python API: benchmarks, notebooks, tests)."""
        dm = cls(steps_per_epoch=steps_per_epoch)
        dm.train_set, dm.val_set = train_set, val_set
        return dm

    # ------------------------------------------------------------------------------------- sources
    def _code_problems(self) -> dict[str, list]:
        """Train/val problems of the code task: a seeded subset of ``codegen.splits(seed=0)``'s train split
        (the same problems, in the same order, as before the file source existed)."""
        from pfkit.tasks import codegen

        h = self.hparams
        sp = codegen.splits(seed=0)
        train = list(sp["train"])
        random.Random(h.seed).shuffle(train)
        return {"train": train[: h.n_train], "val": list(sp["val"])[: h.n_val]}

    def _file_records(self) -> tuple[list[dict], list[dict]]:
        h = self.hparams
        rows = _numbered(load_records(h.prompts_file, h.columns))
        if h.val_file:
            val_rows, train_rows = _numbered(load_records(h.val_file, h.columns)), rows
        else:
            cut = max(len(rows) - h.n_val, 0) if h.n_val else len(rows)
            train_rows, val_rows = rows[:cut], rows[cut:]
        train_rows = list(train_rows)
        random.Random(h.seed).shuffle(train_rows)
        train_rows = train_rows[: h.n_train]
        if not train_rows:
            raise VerifierError(f"{h.prompts_file} leaves no training prompts after holding out n_val={h.n_val}; "
                                "lower n_val or give val_file")
        for part, src in ((rows, h.prompts_file), (val_rows, h.val_file or h.prompts_file)):
            ids = [r["id"] for r in part]
            if len(set(ids)) < len(ids):
                dup = next(i for i in ids if ids.count(i) > 1)
                raise VerifierError(f"{src}: prompt id {dup!r} appears twice; ids must be unique (map another "
                                    "column with columns.id, or leave it unmapped to use row numbers)")
        return train_rows, val_rows

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        h = self.hparams
        if h.task == "codegen":
            self.problems = self._code_problems()
            self.train_set = code_prompt_set(self.problems["train"], timeout=h.sandbox_timeout)
            self.val_set = code_prompt_set(self.problems["val"], timeout=h.sandbox_timeout) \
                if self.problems["val"] else None
            return
        if h.verifier not in VERIFIERS:
            load_callable(h.verifier)  # a bad verifier name fails before the file is read
        train_rows, val_rows = self._file_records()
        kw = dict(verifier_options=h.verifier_options, template=h.template, stop=h.stop,
                  sandbox_timeout=h.sandbox_timeout)
        self.train_set = file_prompt_set(train_rows, h.verifier, source=str(h.prompts_file), **kw)
        self.val_set = file_prompt_set(val_rows, h.verifier, source=str(h.val_file or h.prompts_file),
                                       **kw) if val_rows else None

    def train_dataloader(self) -> DataLoader:
        # under DDP Lightning splits this over ranks: scale it so an epoch is steps_per_epoch steps on each
        world = self.trainer.world_size if self.trainer is not None else 1
        return ResumableLoader(_Steps(self.hparams.steps_per_epoch * world), batch_size=1)  # exact resume

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(1), batch_size=1)


def _numbered(records: list[dict]) -> list[dict]:
    """Give every record an ``id`` (its own, else its row number in the file): stable prompt ids."""
    out = []
    for i, r in enumerate(records):
        rid = r.get("id")
        missing = rid is None or (isinstance(rid, float) and math.isnan(rid))
        out.append({**r, "id": str(i) if missing else str(rid), "_row": i})
    return out


class _Problems(torch.utils.data.Dataset):
    def __init__(self, problems):
        self.problems = list(problems)

    def __len__(self):
        return len(self.problems)

    def __getitem__(self, i):
        return self.problems[i]


class CodePromptDataModule(PromptDataModule):
    """The code task's prompt set batched for PF-PPO: batches of ``CodeProblem`` (lists, not tensors).

    Train: ``n_train`` problems of ``codegen.splits(seed)["train"]`` starting at ``offset`` (so RL prompts
    can be kept apart from the reward model's), shuffled by the loader with ``seed``; val: the val split.
    ``train_set`` / ``val_set`` are the same problems as :class:`PromptSet` s, as for GRPO.
    """

    def __init__(self, seed: int = 0, n_train: int = 512, offset: int = 0, n_val: int = 64):
        LightningDataModule.__init__(self)
        # logger=False: the data seed picks the task's splits and the module's seed its sampling; Lightning
        # refuses to log a module and a datamodule whose same-named hparams differ (a study's seed k run)
        self.save_hyperparameters({"seed": seed, "n_train": n_train, "offset": offset, "n_val": n_val}, logger=False)
        self.problems = None
        self.train_set: PromptSet | None = None
        self.val_set: PromptSet | None = None

    def _code_problems(self) -> dict[str, list]:
        from pfkit.tasks import codegen

        h = self.hparams
        sp = codegen.splits(h.seed)
        return {"train": sp["train"][h.offset:h.offset + h.n_train], "val": sp["val"][: h.n_val], "test": sp["test"]}

    def setup(self, stage: str | None = None) -> None:
        if self.problems is None:
            self.problems = self._code_problems()
            self.train_set = code_prompt_set(self.problems["train"])
            self.val_set = code_prompt_set(self.problems["val"])

    def train_dataloader(self):
        # the module's prompts_per_step is the global batch: under DDP (Lightning adds a DistributedSampler)
        # each rank takes its 1/world share, so a config means the same PPO iteration on 1 or N processes
        world = self.trainer.world_size if self.trainer is not None else 1
        k = getattr(getattr(self.trainer, "lightning_module", None), "hparams", {}).get("prompts_per_step")
        if k is None:
            raise ValueError("CodePromptDataModule batches by the training module's prompts_per_step; train a "
                             "module that has one (PFPPOModule)")
        if k % world:
            raise ValueError(f"prompts_per_step={k} is not divisible by the {world} DDP processes; use a "
                             "multiple of the device count")
        return ResumableLoader(_Problems(self.problems["train"]), batch_size=k // world,  # exact resume
                               shuffle=True, drop_last=True, collate_fn=list,
                               generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self):
        return DataLoader(_Problems(self.problems["val"]), batch_size=len(self.problems["val"]), collate_fn=list)
