"""Region partitioning: SAM (Eq. 1) and classical partitioners, and the per-dataset label-map cache."""

from ratlit.partition.base import Partitioner, to_uint8_rgb, to_unit_range
from ratlit.partition.cache import CacheStats, PartitionCache
from ratlit.partition.classical import FelzenszwalbPartitioner, GridPartitioner, SinglePartitioner, SlicPartitioner
from ratlit.partition.postprocess import compact_labels, labels_from_masks
from ratlit.partition.sam import SamCheckpointNotFoundError, SamPartitioner, build_sam_partitioner, load_sam

__all__ = [
    "CacheStats",
    "FelzenszwalbPartitioner",
    "GridPartitioner",
    "PartitionCache",
    "Partitioner",
    "SamCheckpointNotFoundError",
    "SamPartitioner",
    "SinglePartitioner",
    "SlicPartitioner",
    "build_sam_partitioner",
    "compact_labels",
    "labels_from_masks",
    "load_sam",
    "to_uint8_rgb",
    "to_unit_range",
]
