"""Inference on images of any size: overlapping tiles with blended seams (:mod:`ratlit.inference.tiling`)."""

from ratlit.inference.tiling import Tiling, keeps_freed_memory, tile_multiple, tile_starts, tiled_forward

__all__ = ["Tiling", "keeps_freed_memory", "tile_multiple", "tile_starts", "tiled_forward"]
