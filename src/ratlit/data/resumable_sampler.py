"""The training order, resumable mid-epoch."""

from __future__ import annotations

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """The training order: a permutation drawn from ``(seed, epoch)`` (this rank's share of it), given as draws
    ``epoch * len(dataset) + i`` so the dataset's crops differ per epoch. ``resume_at(epoch, consumed)`` skips the
    items this rank already trained on in that epoch, once: a mid-epoch resume continues the epoch instead of
    replaying its first crops. ``len`` stays the epoch's (Lightning counts the restored batches into it)."""

    def __init__(self, dataset: Dataset, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._skip: tuple[int, int] | None = None

    def resume_at(self, epoch: int, consumed: int) -> None:
        self.set_epoch(epoch)
        self._skip = (epoch, consumed) if consumed > 0 else None

    def __iter__(self):
        order = list(super().__iter__())
        if self._skip is not None and self._skip[0] == self.epoch:
            order = order[self._skip[1]:]
        self._skip = None
        offset = self.epoch * len(self.dataset)
        return iter([offset + i for i in order])
