"""The three tasks' data: real-format loaders, embedded simulated data sets, LightningDataModules."""

from ratlit.data.ct import CTDataModule
from ratlit.data.datamodule import RestorationDataModule
from ratlit.data.paired_crop import random_paired_crop
from ratlit.data.paired_dataset import PairedDataset
from ratlit.data.pathology import PathologyDataModule, bicubic_degrade
from ratlit.data.pet import PETDataModule
from ratlit.data.sample import Sample
from ratlit.data.splits import group_names, split_groups
from ratlit.data.unit_map import UnitMap

DATAMODULES = {"ct": CTDataModule, "pet": PETDataModule, "pathology": PathologyDataModule}

__all__ = [
    "DATAMODULES",
    "CTDataModule",
    "PETDataModule",
    "PairedDataset",
    "PathologyDataModule",
    "RestorationDataModule",
    "Sample",
    "UnitMap",
    "bicubic_degrade",
    "group_names",
    "random_paired_crop",
    "split_groups",
]
