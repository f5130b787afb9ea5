"""Data for the reward model and PF-PPO on code: policy samples labelled by unit tests, preference pairs,
and prompt batches.

Reward-model data follows the paper's recipe with the labelling made explicit: the SFT policy samples
several responses per prompt, the sandbox runs each against the prompt's tests, and for every prompt with
both outcomes a *passing* response is preferred to a *failing* one (the paper pairs the two responses with
the largest edit distance and does not state the labels; "passes the tests" is the natural label).
Held-out pairs come from held-out *prompts*, so pairwise accuracy measures generalisation to new problems.

Text -> ids for a (prompt, response) is :func:`pfkit.models.encode`: prompt and response tokenised separately (the
way sampling sees them), then EOS, left-padded. The reward model scores the hidden state of the last
token, which with left padding is always the last position.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from pfkit.data.prompts import CodePromptDataModule  # noqa: F401 -- configs name it here
from pfkit.models import encode
from pfkit.rollout import sample_and_check
from pfkit.tasks import CodeProblem

__all__ = ["encode", "make_pairs", "split_by_prompt", "synthetic_pairs", "PreferenceDataModule",
           "CodePromptDataModule"]


def _passed(samples: pd.DataFrame) -> pd.Series:
    """The unit-test result: ``score`` (``sample_and_check``'s table) or ``passed`` (older samples files)."""
    return samples["score"] if "score" in samples.columns else samples["passed"]


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance over characters (insert, delete, substitute; all cost 1)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


PAIR_SELECTIONS = ("max_edit", "random")


def make_pairs(samples: pd.DataFrame, max_pairs_per_prompt: int = 4, seed: int = 0,
               selection: str = "max_edit") -> pd.DataFrame:
    """(prompt, chosen=passing, rejected=failing) pairs per prompt, distinct texts, at most
    ``max_pairs_per_prompt`` per prompt out of all pass x fail combinations: with ``selection="max_edit"``
    the ones furthest apart in edit distance (the paper pairs the two of the SFT policy's responses with the
    largest edit distance, after Smaug; ties in seeded random order), with ``"random"`` a seeded random subset.
    ``samples``: ``pfkit.rollout.sample_and_check``'s table (or any with prompt_id, prompt, response, score)."""
    if selection not in PAIR_SELECTIONS:
        raise ValueError(f"pair selection must be one of {PAIR_SELECTIONS}, got {selection!r}")
    rng = random.Random(seed)
    rows = []
    for pid, g in samples.groupby("prompt_id", sort=False):
        ok = _passed(g)
        good = list(dict.fromkeys(g.loc[ok > 0, "response"]))
        bad = [r for r in dict.fromkeys(g.loc[ok <= 0, "response"]) if r not in good]
        combos = [(c, r) for c in good for r in bad]
        rng.shuffle(combos)
        if selection == "max_edit":  # stable sort: the shuffle breaks ties
            combos.sort(key=lambda cr: -edit_distance(*cr))
        prompt = g["prompt"].iloc[0]
        rows += [{"prompt_id": pid, "prompt": prompt, "chosen": c, "rejected": r}
                 for c, r in combos[:max_pairs_per_prompt]]
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "chosen", "rejected"])


def synthetic_pairs(problems: Sequence[CodeProblem], per_prompt: int = 2, seed: int = 0) -> pd.DataFrame:
    """(prompt, chosen=reference, rejected=near-miss) pairs for generated code problems.

    The near-miss (``codegen.wrong_completion``) changes one step or one constant of the reference, which is
    exactly how the embedded policy's samples usually fail (``x < 3`` where the docstring says "less than
    1"). A policy this small rarely produces both outcomes for a prompt, so its own pass/fail pairs are too
    few to teach the comparison; these pairs add the missing contrast. Only for training prompts: held-out
    accuracy is always measured on the policy's own samples.
    """
    from pfkit.tasks import codegen

    rng = random.Random(seed)
    rows = []
    for p in problems:
        seen = set()
        for _ in range(per_prompt):
            bad = codegen.wrong_completion(p, rng)
            if bad is None or bad in seen:
                continue
            seen.add(bad)
            rows.append({"prompt_id": p.task_id, "prompt": p.prompt, "chosen": p.reference, "rejected": bad})
    return pd.DataFrame(rows, columns=["prompt_id", "prompt", "chosen", "rejected"])


def split_by_prompt(frame: pd.DataFrame, val_fraction: float = 0.2, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) with every prompt's rows on one side."""
    ids = sorted(frame["prompt_id"].unique())
    random.Random(seed).shuffle(ids)
    n_val = max(1, round(len(ids) * val_fraction)) if len(ids) > 1 and val_fraction > 0 else 0
    val_ids = set(ids[:n_val])
    is_val = frame["prompt_id"].isin(val_ids)
    return frame[~is_val].reset_index(drop=True), frame[is_val].reset_index(drop=True)


class PreferenceDataModule(LightningDataModule):
    """Bradley-Terry pairs from policy samples labelled by unit tests.

    ``samples``: a parquet file (or DataFrame) with columns prompt_id, prompt, response, score (the unit-test
    result; ``passed`` in older files; ``pfkit.rollout.sample_and_check``'s table); when None,
    the policy at ``policy`` samples ``group_size`` responses for each of ``n_prompts`` training problems of
    the embedded code task (``codegen.splits(seed)["train"]``). Batches hold chosen and rejected ids.
    ``synthetic_per_prompt`` adds that many reference > near-miss pairs (:func:`synthetic_pairs`) for
    every *training* prompt of the embedded task, and for ``synthetic_prompts`` more generated problems
    (``codegen.extra_split("rm_synthetic", n)``: disjoint from every fixed split, so from the RL prompts, and
    from the extra splits named in ``synthetic_exclude``, e.g. the study's evaluation set
    ``{study_eval: 1024}``). Validation pairs are always the policy's own, on held-out prompts.
    ``pair_selection``: which pass x fail pairs of a prompt are kept (:func:`make_pairs`).
    """

    def __init__(self, policy: str = "embedded", samples: str | None = None, n_prompts: int = 512,
                 group_size: int = 8, max_new_tokens: int = 96, temperature: float = 1.0, top_p: float = 0.9,
                 max_pairs_per_prompt: int = 4, val_fraction: float = 0.25, batch_size: int = 16,
                 max_length: int = 384, seed: int = 0, synthetic_per_prompt: int = 0, synthetic_prompts: int = 0,
                 pair_selection: str = "max_edit", synthetic_exclude: dict | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["samples"] if isinstance(samples, pd.DataFrame) else [])
        self._samples_arg = samples
        self.tokenizer = None
        self.samples: pd.DataFrame | None = None
        self.train_pairs = self.val_pairs = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_pairs is not None:
            return
        from pfkit import models

        h = self.hparams
        if self.tokenizer is None or self._samples_arg is None:
            model, tokenizer = models.load_policy(h.policy)
            self.tokenizer = self.tokenizer or tokenizer
        if isinstance(self._samples_arg, pd.DataFrame):
            self.samples = self._samples_arg
        elif self._samples_arg is not None:
            self.samples = pd.read_parquet(self._samples_arg)
        else:
            from pfkit.tasks import codegen

            problems = codegen.splits(h.seed)["train"][: h.n_prompts]
            self.samples = sample_and_check(model, tokenizer, problems, h.group_size, max_new_tokens=h.max_new_tokens,
                                            temperature=h.temperature, top_p=h.top_p, seed=h.seed, batch_prompts=16,
                                            progress="sampling (RM data)")
        cols = set(self.samples.columns)
        missing = {"prompt_id", "prompt", "response"} - cols | ({"score"} if not cols & {"score", "passed"} else set())
        if missing:
            raise ValueError(f"samples lack column(s) {sorted(missing)}; need prompt_id, prompt, response, score")
        train_s, val_s = split_by_prompt(self.samples, h.val_fraction, h.seed)
        self.train_samples, self.val_samples = train_s, val_s
        self.train_pairs = make_pairs(train_s, h.max_pairs_per_prompt, h.seed, h.pair_selection)
        if h.synthetic_per_prompt > 0:
            from pfkit.tasks import codegen

            problems = self._codegen_problems(train_s["prompt_id"].unique())
            if h.synthetic_prompts > 0:
                problems += codegen.extra_split("rm_synthetic", h.synthetic_prompts, h.seed,
                                                exclude=dict(h.synthetic_exclude or {}))
            extra = synthetic_pairs(problems, h.synthetic_per_prompt, h.seed)
            self.train_pairs = pd.concat([self.train_pairs, extra], ignore_index=True)
        self.val_pairs = make_pairs(val_s, h.max_pairs_per_prompt, h.seed + 1, h.pair_selection)
        if self.train_pairs.empty:
            raise ValueError("no preference pairs: no training prompt has both a passing and a failing sample; "
                             "sample more responses per prompt (group_size) or use a policy with pass@1 in 0.2..0.8")

    def _codegen_problems(self, ids) -> list[CodeProblem]:
        from pfkit.tasks import codegen

        by_id = {p.task_id: p for split in codegen.splits(self.hparams.seed).values() for p in split}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"synthetic_per_prompt needs embedded-task prompts (codegen.splits(seed={self.hparams.seed})),"
                             f" but {len(unknown)} prompt id(s) are not, e.g. {unknown[0]!r}; set synthetic_per_prompt: 0")
        return [by_id[i] for i in ids]

    def collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        prompts = [r["prompt"] for r in rows]
        c = encode(self.tokenizer, prompts, [r["chosen"] for r in rows], self.hparams.max_length)
        r = encode(self.tokenizer, prompts, [r["rejected"] for r in rows], self.hparams.max_length)
        return {"chosen_ids": c["input_ids"], "chosen_mask": c["attention_mask"],
                "chosen_response_mask": c["response_mask"], "rejected_ids": r["input_ids"],
                "rejected_mask": r["attention_mask"], "rejected_response_mask": r["response_mask"]}

    def train_dataloader(self):
        return DataLoader(self.train_pairs.to_dict("records"), batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=self.collate, generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self):
        return DataLoader(self.val_pairs.to_dict("records"), batch_size=64, collate_fn=self.collate)

