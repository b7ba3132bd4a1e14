"""Running trained networks on new data: restoring scans (:mod:`ratlit.inference.restore`) and evaluating a
checkpoint (:mod:`ratlit.inference.evaluation`). Tiles with blended seams are :mod:`ratlit.models.tiling`."""

from ratlit.models.tiling import Tiling, keeps_freed_memory, tile_multiple, tile_starts, tiled_forward

__all__ = ["Tiling", "keeps_freed_memory", "tile_multiple", "tile_starts", "tiled_forward"]
