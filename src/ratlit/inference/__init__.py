"""Inference on images of any size: overlapping tiles with blended seams (:mod:`ratlit.inference.tiling`)."""

from ratlit.inference.tiling import Tiling, tile_multiple, tile_starts, tiled_forward

__all__ = ["Tiling", "tile_multiple", "tile_starts", "tiled_forward"]
