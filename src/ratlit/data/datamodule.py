"""The LightningDataModule the three tasks share: samples listed, groups split, the partition cache, loaders.

A task lists its ``Sample``s (a name, the group it belongs to — patient for CT and PET, image for
pathology — and a picklable loader returning ``(lq, hq)`` float32 ``[C, H, W]``). The DataModule splits
the groups, fills the partition cache from ``prepare_data`` (one process) and serves batches
``{"lq", "hq": [B, C, H, W], "regions": [B, H, W] int64, "name": list[str]}``. Training batches are random
paired crops with the label map cropped alongside and one of the 8 flips/rotations applied to all three.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from ratlit.data.paired_dataset import PairedDataset
from ratlit.data.resumable_sampler import ResumableSampler
from ratlit.data.sample import Sample
from ratlit.data.splits import (
    SPLITS,
    group_names,
    group_pattern,
    read_splits,
    split_groups,
    warn_on_people_in_several_splits,
)
from ratlit.data.unit_map import UnitMap
from ratlit.partition import CacheStats, PartitionCache, Partitioner, SlicPartitioner
from ratlit.partition.density import median_shape
from ratlit.utils.config import default_cache_dir
from ratlit.utils.errors import InputError
from ratlit.utils.files import check_writable, make_temp_dir

log = logging.getLogger(__name__)
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}  # no predict_dataloader


class RestorationDataModule(L.LightningDataModule, ABC):
    """Base DataModule of a task. Subclasses list samples from ``root`` and build the embedded data set
    (the abstract methods below: a subclass that lacks one cannot be made).

    ``root=None`` uses the embedded data set, built on first use under ``cache_dir`` (default: $RATLIT_CACHE
    or ~/.cache/ratlit) from ``embedded_seed``. ``splits``: a mapping or a JSON/YAML file ``{train, val, test:
    [groups]}``; else ``<root>/splits.json`` if present; else each group by a hash of its name and
    ``split_seed`` (``ratlit.data.splits.split_groups``). ``group_by``: a regex naming the group of each
    task-given group name (e.g. the slide of a tile), see ``ratlit.data.splits.group_names``. Channels and
    the metrics' data range are the task config's (``in_channels``, ``data_range`` in conf/task/).
    """

    task: ClassVar[str]
    embedded_version: ClassVar[int] = 1

    def __init__(
        self,
        root: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        partitioner: Partitioner | None = None,
        patch_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 0,
        augment: bool = True,
        splits: str | Mapping | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        in_memory: bool = True,
        epoch_size: int | None = None,
        embedded_seed: int = 0,
        group_by: str | None = None,
    ) -> None:
        super().__init__()
        if patch_size < 1 or batch_size < 1:
            raise InputError(f"patch_size and batch_size must be positive, got {patch_size} and {batch_size}")
        self.root = None if root in (None, "") else Path(root).expanduser()
        if self.root is not None and not self.root.exists():
            raise InputError(f"data root {self.root} does not exist")
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir not in (None, "") else default_cache_dir()
        self.partitioner = partitioner if partitioner is not None else SlicPartitioner()
        self.patch_size, self.batch_size, self.num_workers = patch_size, batch_size, num_workers
        self.augment, self.in_memory, self.epoch_size = augment, in_memory, epoch_size
        self.splits_source = splits
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.embedded_seed, self.group_by = embedded_seed, group_by
        group_pattern(group_by)  # a bad regex fails here, before any data is read
        self.datasets: dict[str, PairedDataset] = {}
        self.split_groups: dict[str, list[str]] = {}
        self._samples: list[Sample] | None = None

    # --- what a task provides ---------------------------------------------------------------------

    @abstractmethod
    def list_samples(self, root: Path) -> list[Sample]:
        """All LQ/HQ pairs under ``root`` (real formats); raise ValueError naming what does not pair."""

    @abstractmethod
    def build_embedded(self, folder: Path, seed: int) -> None:
        """Write the embedded data set, in the task's real format, into the empty ``folder``."""

    # --- intensities: what predict needs to run the task's network on a new scan ----------------------

    input_formats: ClassVar[tuple[str, ...]]  # what predict accepts: "dicom", "nifti", "image"
    modalities: ClassVar[tuple[str, ...]] = ()  # DICOM Modality values of the task's scans (none: no check)
    value_floor: ClassVar[float | None] = None  # physical lower bound of restored values (PET: activity >= 0)

    @abstractmethod
    def unit_map(self, volume: np.ndarray, source: str) -> UnitMap:
        """The map of one input ``volume`` (a whole LQ volume or image, in its own units) to network units,
        exactly as the task's loaders map training data; ``source`` names the file in errors."""

    # --- data locations ---------------------------------------------------------------------------

    @property
    def data_root(self) -> Path:
        if self.root is not None:
            return self.root
        return self.cache_dir / "embedded" / f"{self.task}-v{self.embedded_version}-seed{self.embedded_seed}"

    @property
    def partition_cache(self) -> PartitionCache:
        return PartitionCache(self.cache_dir / "partitions" / self.task, self.partitioner)

    def ensure_embedded(self) -> Path:
        """Build the embedded data set once: under a file lock (other processes wait, then reuse it), in a
        temporary folder renamed into place, so a reader never sees a half-built set."""
        folder = self.data_root
        if self.root is not None or (folder / "COMPLETE").exists():
            return folder
        check_writable(folder.parent, f"cache folder for the embedded {self.task} set (RATLIT_CACHE / paths.cache_dir)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        with open(folder.parent / f".{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (folder / "COMPLETE").exists():  # built while this process waited
                return folder
            tmp = make_temp_dir(folder.parent, f".{folder.name}.")
            try:
                start = time.perf_counter()
                log.info("building the embedded %s data set in %s", self.task, folder)
                self.build_embedded(tmp, self.embedded_seed)
                (tmp / "COMPLETE").write_text(f"built in {time.perf_counter() - start:.1f} s\n")
                if folder.exists():  # a stale, incomplete folder from an interrupted build
                    shutil.rmtree(folder)
                os.rename(tmp, folder)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return folder

    def samples(self) -> list[Sample]:
        """The data set's pairs, listed once per DataModule (prepare_data, setup and every stage share them)."""
        if self._samples is None:
            samples = self.list_samples(self.ensure_embedded())
            if not samples:
                raise InputError(f"no {self.task} image pairs found under {self.data_root}")
            if self.group_by:
                group_of = group_names(sorted({s.group for s in samples}), self.group_by)
                samples = [replace(s, group=group_of[s.group]) for s in samples]
            self._samples = samples
        return self._samples

    def resolve_splits(self, samples: Sequence[Sample]) -> dict[str, list[str]]:
        source = self.splits_source
        if source is None and (self.data_root / "splits.json").exists():
            source = self.data_root / "splits.json"
        assigned = split_groups(
            [s.group for s in samples], read_splits(source), self.val_fraction, self.test_fraction, self.split_seed
        )
        warn_on_people_in_several_splits(samples, assigned)
        return assigned

    # --- Lightning hooks --------------------------------------------------------------------------

    def prepare_data(self) -> CacheStats:
        """Build the embedded set if needed and partition every LQ image into the cache (one process)."""
        from tqdm.auto import tqdm

        samples = self.samples()
        cache, stats = self.partition_cache, CacheStats()
        for sample in tqdm(samples, desc=f"partition {self.task} ({self.partitioner.name})", unit="img"):
            lq, _ = sample.load()
            cache.labels(lq, stats)
        log.info(
            "partition cache %s: %d computed, %d reused, %d repaired", cache.folder, stats.computed, stats.reused,
            stats.repaired
        )
        return stats

    def split_samples(self, split: str) -> list[Sample]:
        """The pairs of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if not self.split_groups:
            self.split_groups = self.resolve_splits(self.samples())
        members = set(self.split_groups[split])
        return [s for s in self.samples() if s.group in members]

    def train_image_shape(self, most: int = 16) -> tuple[int, int] | None:
        """``(height, width)`` of the median training LQ image by area, from at most ``most`` of them evenly
        spaced (a data set's sizes rarely vary): the size the partitioner's region count refers to
        (ratlit.partition.density). None for an empty train split."""
        chosen = self.split_samples("train")
        step = max(1, -(-len(chosen) // most))
        return median_shape(sample.load()[0].shape for sample in chosen[::step])

    def setup(self, stage: str | None = None) -> None:
        for split in SPLITS if stage is None else STAGE_SPLITS.get(stage, ()):
            self.dataset(split)

    def dataset(self, split: str) -> PairedDataset:
        """The split's dataset, built (and, in memory, loaded) the first time a stage needs it."""
        if split not in self.datasets:
            chosen = self.split_samples(split)
            if split == "train":
                length = max(self.epoch_size or 0, len(chosen)) if chosen else 0
                dataset = PairedDataset(chosen, self.partition_cache, self.patch_size, self.augment, self.in_memory,
                                        length)
            else:
                dataset = PairedDataset(chosen, self.partition_cache, None, False, self.in_memory)
            self.datasets[split] = dataset
        return self.datasets[split]

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if len(dataset) == 0:
            raise InputError(f"the {split} split of {self.task} is empty (groups: {self.split_groups.get(split)})")
        sampler = self._train_sampler(dataset, batch_size) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            drop_last=shuffle and len(dataset) >= batch_size,
            persistent_workers=self.num_workers > 0,
        )

    def _train_sampler(self, dataset: PairedDataset, batch_size: int) -> ResumableSampler:
        """The order of the training items from (seed, epoch), per rank; on a mid-epoch resume it skips what this
        rank already trained on (Lightning has restored its batch count by the time it asks for this loader)."""
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything; Lightning's own default is 0
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        dataset.seed = seed
        sampler = ResumableSampler(dataset, seed, num_replicas=world, rank=rank)
        if trainer is not None and trainer.fit_loop.restarting:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
            batches = len(sampler) // batch_size
            sampler.resume_at(trainer.current_epoch, done * batch_size if done < batches else 0)
        return sampler

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", 1, shuffle=False)  # whole images of different sizes

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", 1, shuffle=False)
