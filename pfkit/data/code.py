"""SFT data for the embedded code task: prompt + reference completion, loss on the completion only."""

from __future__ import annotations

import random

import torch
from lightning.pytorch import LightningDataModule
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from pfkit.tasks import CodeProblem, codegen


class Problems:
    """The problems of a batch. Opaque to Lightning's batch transfer, which rejects frozen dataclasses."""

    def __init__(self, items: list[CodeProblem]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


class CodeSFTDataModule(LightningDataModule):
    """Train on (prompt, completion) pairs from ``codegen.splits(seed)``; validate on the val problems.

    ``wrong_fraction`` of the training pairs get a plausible *wrong* completion (one step or constant
    changed, guaranteed to fail the tests), so the policy learns a distribution that is only partly right;
    that keeps per-problem success rates spread out even where the model fits its data well.

    The tokenizer belongs to the policy: the loaders take the training module's (``SFTModule`` builds or
    loads it in its ``setup``, training a new one on ``corpus()`` when it starts from scratch), and
    ``max_length`` is lowered to the module's model context.
    """

    def __init__(self, seed: int = 0, n_train: int = 3000, n_val: int = 64, n_test: int = 256,
                 batch_size: int = 32, wrong_fraction: float = 0.0, max_length: int = 384,
                 val_batch_size: int = 16, num_workers: int = 0):
        super().__init__()
        if not 0.0 <= wrong_fraction < 1.0:
            raise ValueError(f"wrong_fraction must be in [0, 1), got {wrong_fraction}")
        self.save_hyperparameters()
        self.tokenizer = None
        self.max_length = max_length  # lowered to the policy's context size by _from_module
        self.problems: dict[str, list[CodeProblem]] | None = None
        self.train_pairs: list[tuple[str, str]] = []

    # ------------------------------------------------------------------ data
    def setup(self, stage: str | None = None) -> None:
        if self.problems is not None:
            return
        h = self.hparams
        self.problems = codegen.splits(h.seed, n_train=h.n_train, n_val=h.n_val, n_test=h.n_test)
        rng = random.Random(f"sft-wrong-{h.seed}")
        pairs = []
        for p in self.problems["train"]:
            completion = p.reference
            if h.wrong_fraction and rng.random() < h.wrong_fraction:
                completion = codegen.wrong_completion(p, rng) or completion
            pairs.append((p.prompt, completion))
        self.train_pairs = pairs

    def corpus(self) -> list[str]:
        """Texts a tokenizer for this task is trained on (train prompts + references)."""
        self.setup()
        return [p.prompt + p.reference for p in self.problems["train"]]

    # ------------------------------------------------------------------ batches
    def collate(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        """Right-padded ``input_ids``/``attention_mask`` with ``labels`` = -100 outside the completion.

        Prompt and completion are tokenized separately (the same way sampling sees the prompt), and the
        completion is closed with EOS so the policy learns where to stop.
        """
        tok = self.tokenizer
        if tok is None:
            raise RuntimeError("CodeSFTDataModule.tokenizer is not set: give it one, or train it with a module "
                               "that has a tokenizer (SFTModule)")
        rows, labels = [], []
        for prompt, completion in pairs:
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            c = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            ids = (p + c)[: self.max_length]
            rows.append(ids)
            labels.append(([-100] * len(p) + c)[: self.max_length])
        def right_pad(seqs, value):
            return pad_sequence([torch.tensor(x, dtype=torch.long) for x in seqs], batch_first=True, padding_value=value)

        return {"input_ids": right_pad(rows, tok.pad_token_id), "attention_mask": right_pad([[1] * len(r) for r in rows], 0),
                "labels": right_pad(labels, -100)}

    def _collate_problems(self, problems: list[CodeProblem]) -> dict:
        batch = self.collate([(p.prompt, p.reference) for p in problems])
        batch["problems"] = Problems(problems)
        return batch

    def _from_module(self) -> None:
        """The training module's tokenizer and context size (its ``setup`` has run before any loader)."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        if getattr(module, "tokenizer", None) is not None:  # the policy's ids are the only ones it can read
            self.tokenizer = module.tokenizer
        ctx = getattr(getattr(getattr(module, "model", None), "config", None), "max_position_embeddings", None)
        if ctx:
            self.max_length = min(self.max_length, ctx)

    def train_dataloader(self):
        self._from_module()
        return DataLoader(self.train_pairs, batch_size=self.hparams.batch_size, shuffle=True,
                          collate_fn=self.collate, num_workers=self.hparams.num_workers, drop_last=True)

    def val_dataloader(self):
        self._from_module()
        return DataLoader(self.problems["val"], batch_size=self.hparams.val_batch_size, shuffle=False,
                          collate_fn=self._collate_problems)

    def test_dataloader(self):
        self._from_module()
        return DataLoader(self.problems["test"], batch_size=self.hparams.val_batch_size, shuffle=False,
                          collate_fn=self._collate_problems)
