"""A partitioner rebuilt from the spec a run recorded."""

from __future__ import annotations

from pathlib import Path

from ratlit.partition.base import Partitioner
from ratlit.partition.classical import FelzenszwalbPartitioner, GridPartitioner, SinglePartitioner, SlicPartitioner
from ratlit.partition.litemedsam import LiteMedSamPartitioner
from ratlit.partition.sam import SamPartitioner
from ratlit.utils.errors import InputError


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
            raise InputError(
                f"SAM checkpoint {partitioner.checkpoint} is not the one the run used (sha256 {digest}...)"
            )
        return partitioner
    if name == "litemedsam":
        digest = spec.pop("weights_sha256", None)
        if spec.get("weights") and not Path(spec["weights"]).is_file():
            spec["weights"] = None  # another machine: its installed package's file, checked by digest below
        partitioner = LiteMedSamPartitioner(**spec)
        if digest and partitioner.weights_digest != digest:
            raise InputError(
                f"LiteMedSAM weights {partitioner.weights} are not the ones the run used (sha256 {digest}...)"
            )
        return partitioner
    if name not in classes:
        raise InputError(f"unknown partitioner {name!r} in spec {spec}")
    return classes[name](**spec)

