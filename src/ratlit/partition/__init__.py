"""Region partitioning: SAM and LiteMedSAM (Eq. 1), classical partitioners, and the per-dataset label-map cache."""

from ratlit.partition.base import Partitioner, to_uint8_rgb, to_unit_range
from ratlit.partition.cache import CacheStats, PartitionCache
from ratlit.partition.classical import FelzenszwalbPartitioner, GridPartitioner, SinglePartitioner, SlicPartitioner
from ratlit.partition.factory import partitioner_from_spec
from ratlit.partition.litemedsam import (
    LiteMedSamNotInstalledError,
    LiteMedSamPartitioner,
    build_litemedsam_partitioner,
    load_litemedsam,
)
from ratlit.partition.postprocess import compact_labels, labels_from_masks
from ratlit.partition.sam import SamCheckpointNotFoundError, SamPartitioner, build_sam_partitioner, load_sam

__all__ = [
    "CacheStats",
    "FelzenszwalbPartitioner",
    "GridPartitioner",
    "LiteMedSamNotInstalledError",
    "LiteMedSamPartitioner",
    "PartitionCache",
    "Partitioner",
    "SamCheckpointNotFoundError",
    "SamPartitioner",
    "SinglePartitioner",
    "SlicPartitioner",
    "build_litemedsam_partitioner",
    "build_sam_partitioner",
    "compact_labels",
    "labels_from_masks",
    "load_litemedsam",
    "load_sam",
    "partitioner_from_spec",
    "to_uint8_rgb",
    "to_unit_range",
]
