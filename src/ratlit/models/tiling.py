"""Overlapping tiles with blended seams: a network runs on an image of any size in bounded memory.

The design follows MONAI's ``sliding_window_inference`` (tiles of a fixed size, overlapping, each prediction
weighted by an importance map, the sums divided by the summed weights), with two changes for restoration:

* Tiles start at multiples of the network's own grid (``tile_multiple``: RAT's ``2**levels * window``, the
  U-Net's ``2**levels``, SwinIR's window): every tile's pixel-unshuffle cells, attention windows and
  nearest-sampled region tokens are the whole image's. The last tile of a row ends at the image's edge, where
  the network pads as it pads the whole image. Tiles are never padded by us.
* The weight of a tile falls to zero over the first quarter of ``overlap`` from each of its edges inside the
  image, then rises linearly to 1 at ``3/4 overlap`` (image edges keep weight 1). A network whose output at a
  pixel depends only on inputs within ``overlap // 4`` pixels (on the same grid) therefore gives the whole-image
  result within float rounding: every tile that contributes to a pixel saw all of that pixel's inputs.

What equals the whole-image result: with ``max_tile`` >= the image's height and width the network runs once on
the whole image (bit-equal). A convolutional network whose receptive-field radius is <= ``overlap // 4``
(tests/test_tiling.py: the cnn and edsr baselines) agrees within float tolerance. RAT and NAFNet do not: their
NAFBlocks average each channel over the whole (tile) image, and R-MSA attends over a whole region of which a
tile sees only a part. For them tiling is an approximation: region labels are the whole image's, cut with the
tiles (so a tile's regions are pieces of the same regions), seams are blended, and docs/scale.md gives the measured
difference. RCAN's channel attention and SwinIR's shifted windows are likewise global / larger than a margin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ratlit.utils.errors import InputError


@dataclass(frozen=True)
class Tiling:
    """``max_tile``: the largest tile side the network sees (None: whole images); ``overlap`` between tiles."""

    max_tile: int | None = 512
    overlap: int = 64

    @classmethod
    def from_config(cls, max_tile: object, overlap: object) -> Tiling:
        """Checked config values; a bad one raises one ValueError naming the key."""
        if max_tile is not None and (isinstance(max_tile, bool) or not isinstance(max_tile, int) or max_tile < 32):
            raise InputError(f"max_tile must be null (whole images) or an integer >= 32 pixels, got {max_tile!r}")
        if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0:
            raise InputError(f"tile_overlap must be an integer >= 0 pixels, got {overlap!r}")
        if max_tile is not None and 2 * overlap >= max_tile:
            raise InputError(f"tile_overlap must be less than half of max_tile ({max_tile}), got {overlap}")
        return cls(max_tile, overlap)


def keeps_freed_memory(tiling: Tiling, region_impl: str | None) -> bool:
    """Whether predict / evaluate ask malloc to keep freed memory (ratlit.allocator): only with tiles bounded by
    ``max_tile`` and no dense R-MSA: tiled, the peak stays near glibc's default; untiled it grows beyond 1.5x
    (docs/scale.md, "Memory and the allocator")."""
    return tiling.max_tile is not None and region_impl != "dense"


def tile_multiple(net: nn.Module) -> int:
    """The grid a network's tiles must start on: its padding multiple (RAT, U-Net) or attention window."""
    for name in ("pad_multiple", "window_size"):
        value = getattr(net, name, None)
        if isinstance(value, int) and value > 0:
            return value
    levels = getattr(net, "levels", None)
    return 2**levels if isinstance(levels, int) and levels > 0 else 1


def tile_starts(size: int, tile: int, overlap: int, multiple: int = 1) -> list[int]:
    """Starts of tiles of side <= ``tile`` covering ``[0, size)``, on multiples of ``multiple``, consecutive tiles
    overlapping by >= ``overlap`` (the last one ends at ``size`` and may be shorter)."""
    tile = tile // multiple * multiple
    stride = (tile - overlap) // multiple * multiple
    if stride < multiple:
        raise InputError(f"max_tile {tile} less tile_overlap {overlap} leaves no stride on the network's grid "
                         f"of {multiple} pixels: raise max_tile or lower tile_overlap")
    if size <= tile:
        return [0]
    last = math.ceil((size - tile) / multiple) * multiple  # the last tile reaches the image's edge
    count = 1 + math.ceil(last / stride)
    # Evenly spread, rounded down to the grid: no gap exceeds `stride`, so every overlap is >= `overlap`.
    return [k * last // (count - 1) // multiple * multiple for k in range(count - 1)] + [last]


def edge_weights(start: int, stop: int, size: int, overlap: int) -> Tensor:
    """Weights ``[stop - start]`` of one tile along one axis: 0 for ``overlap // 4`` pixels from an edge inside
    the image, then a linear ramp to 1; image edges keep 1."""
    margin = overlap // 4
    ramp = overlap - 2 * margin + 1
    position = torch.arange(stop - start, dtype=torch.float64)
    weight = torch.ones_like(position)
    if start > 0:
        weight = torch.minimum(weight, ((position - margin + 1) / ramp).clamp(0, 1))
    if stop < size:
        weight = torch.minimum(weight, ((stop - start - 1 - position - margin + 1) / ramp).clamp(0, 1))
    return weight


def tiled_forward(
    net: Callable[[Tensor, Tensor | None], Tensor],
    lq: Tensor,
    regions: Tensor | None,
    tiling: Tiling,
    multiple: int = 1,
    progress: bool = True,
) -> Tensor:
    """``net(lq [B, C, H, W], regions [B, H, W] | None) -> [B, C, H, W]`` on tiles of side <= ``max_tile``.

    ``regions`` (the whole image's label map) is cut with the tiles. One tile covering the image: one call.
    """
    height, width = lq.shape[-2:]
    if tiling.max_tile is None or (height <= tiling.max_tile and width <= tiling.max_tile):
        return net(lq, regions)
    from tqdm.auto import tqdm

    rows = tile_starts(height, min(tiling.max_tile, height), tiling.overlap, multiple)
    cols = tile_starts(width, min(tiling.max_tile, width), tiling.overlap, multiple)
    side_h = min(tiling.max_tile, height) // multiple * multiple if len(rows) > 1 else height
    side_w = min(tiling.max_tile, width) // multiple * multiple if len(cols) > 1 else width
    out: Tensor | None = None
    total = torch.zeros(height, width, dtype=torch.float32, device=lq.device)
    tiles = [(top, left) for top in rows for left in cols]
    for top, left in tqdm(tiles, desc=f"tiles of {side_h}x{side_w}", unit="tile", leave=False, disable=not progress):
        bottom, right = min(top + side_h, height), min(left + side_w, width)
        piece = net(lq[..., top:bottom, left:right], None if regions is None else regions[..., top:bottom, left:right])
        weight = torch.outer(edge_weights(top, bottom, height, tiling.overlap),
                             edge_weights(left, right, width, tiling.overlap)).to(lq.device, torch.float32)
        if out is None:
            out = torch.zeros(*piece.shape[:-2], height, width, dtype=torch.float32, device=lq.device)
        out[..., top:bottom, left:right] += piece.float() * weight
        total[top:bottom, left:right] += weight
    return (out / total).to(lq.dtype)
