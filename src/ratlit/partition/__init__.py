"""Region partitioning: SAM and LiteMedSAM (Eq. 1), classical partitioners, and the per-dataset label-map cache."""

from pathlib import Path

from ratlit.partition.base import Partitioner, to_uint8_rgb, to_unit_range
from ratlit.partition.cache import CacheStats, PartitionCache
from ratlit.partition.classical import FelzenszwalbPartitioner, GridPartitioner, SinglePartitioner, SlicPartitioner
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
    "to_uint8_rgb",
    "to_unit_range",
]


def partitioner_from_spec(spec: dict) -> Partitioner:
    """Rebuild the partitioner a run recorded (``Partitioner.spec``), e.g. to partition new images alike."""
    spec = dict(spec)
    name = spec.pop("name", None)
    spec.pop("requested", None)
    classes = {cls.name: cls for cls in (SlicPartitioner, FelzenszwalbPartitioner, GridPartitioner, SinglePartitioner)}
    if name == "sam":
        digest = spec.pop("checkpoint_sha256", None)
        partitioner = SamPartitioner(**spec)
        if digest and partitioner.checkpoint_digest != digest:
            raise ValueError(
                f"SAM checkpoint {partitioner.checkpoint} is not the one the run used (sha256 {digest}...)"
            )
        return partitioner
    if name == "litemedsam":
        digest = spec.pop("weights_sha256", None)
        if spec.get("weights") and not Path(spec["weights"]).is_file():
            spec["weights"] = None  # another machine: its installed package's file, checked by digest below
        partitioner = LiteMedSamPartitioner(**spec)
        if digest and partitioner.weights_digest != digest:
            raise ValueError(
                f"LiteMedSAM weights {partitioner.weights} are not the ones the run used (sha256 {digest}...)"
            )
        return partitioner
    if name not in classes:
        raise ValueError(f"unknown partitioner {name!r} in spec {spec}")
    return classes[name](**spec)


__all__.append("partitioner_from_spec")
