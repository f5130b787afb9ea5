"""A DataLoader that resumes mid-epoch (Lightning's stateful-dataloader protocol: ``state_dict`` /
``load_state_dict``), so ``pfkit fit --ckpt_path`` continues an epoch at the batch after the checkpoint,
with the shuffle order the epoch had, instead of restarting the epoch's iterator (Lightning's "your
dataloader is not resumable" warning)."""

from __future__ import annotations

from torch.utils.data import DataLoader


def _track_epoch(sampler) -> None:
    """Give a sampler without one (RandomSampler, SequentialSampler) the ``set_epoch`` that Lightning calls
    on every epoch's sampler, so the loader knows which epoch an iteration serves (a DistributedSampler has it)."""
    if sampler is None or callable(getattr(sampler, "set_epoch", None)):
        return
    sampler.epoch = 0

    def set_epoch(epoch: int) -> None:
        sampler.epoch = epoch

    sampler.set_epoch = set_epoch


class ResumableLoader(DataLoader):
    """``DataLoader`` with the same arguments; its state is the epoch it was serving, the batches served in
    it and the shuffle generator's state when that epoch began (and now, for a resume into the next epoch).
    No ``__init__`` of its own: Lightning re-creates loaders from their arguments (DDP samplers).

    The epoch matters: a checkpoint taken at the last batch of an epoch cut short (``limit_train_batches``)
    has served fewer batches than the loader's length, yet Lightning resumes it in the *next* epoch; skipping
    ``served`` batches there replayed other prompts (PF-PPO under FSDP, tests/test_fsdp.py). The state
    applies only to an iteration of the epoch it was saved in; a later epoch starts at its first batch with
    the generator where the saved epoch left it."""

    def __iter__(self):
        # not a generator function: this part runs at iter(), before Lightning's set_epoch for the epoch
        _track_epoch(self.sampler)
        _track_epoch(getattr(self.batch_sampler, "sampler", None))
        return self._iterate()

    def _epoch(self):
        return getattr(self.sampler, "epoch", getattr(getattr(self.batch_sampler, "sampler", None), "epoch", None))

    def _iterate(self):
        state, self._to_load = getattr(self, "_to_load", None), None
        gen, skip = self.generator, 0
        self._served_epoch = self._epoch()
        if state is not None:
            same = state.get("epoch") is None or state["epoch"] == self._served_epoch
            done = state["served"] >= len(self) or not same  # the saved epoch is over
            saved = state.get("generator_now" if done else "generator_epoch")
            if gen is not None and saved is not None:
                gen.set_state(saved)
            skip = 0 if done else state["served"]
        self._epoch_gen = gen.get_state() if gen is not None else None
        self._served = skip
        for i, batch in enumerate(super().__iter__()):
            if i < skip:  # the batches the run had trained on before its checkpoint
                continue
            self._served = i + 1
            yield batch

    def state_dict(self) -> dict:
        gen = self.generator
        return {"epoch": getattr(self, "_served_epoch", None), "served": getattr(self, "_served", 0),
                "generator_epoch": getattr(self, "_epoch_gen", None),
                "generator_now": gen.get_state() if gen is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_load = state_dict
