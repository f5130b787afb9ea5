"""A DataLoader that resumes mid-epoch (Lightning's stateful-dataloader protocol: ``state_dict`` /
``load_state_dict``), so ``pfkit fit --ckpt_path`` continues an epoch at the batch after the checkpoint,
with the shuffle order the epoch had, instead of restarting the epoch's iterator (Lightning's "your
dataloader is not resumable" warning)."""

from __future__ import annotations

from torch.utils.data import DataLoader


class ResumableLoader(DataLoader):
    """``DataLoader`` with the same arguments; its state is the batches served in the current epoch and the
    shuffle generator's state when the epoch began (and now, for a checkpoint taken at an epoch's end).
    No ``__init__`` of its own: Lightning re-creates loaders from their arguments (DDP samplers)."""

    def __iter__(self):
        state, self._to_load = getattr(self, "_to_load", None), None
        gen, skip = self.generator, 0
        if state is not None:
            done = state["served"] >= len(self)  # the checkpoint was taken at the end of an epoch
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
        return {"served": getattr(self, "_served", 0), "generator_epoch": getattr(self, "_epoch_gen", None),
                "generator_now": gen.get_state() if gen is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_load = state_dict
