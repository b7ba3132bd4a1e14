"""The authors' public weights (Model_RAT.py of Yaziwel/Region-Attention-Transformer-for-Medical-Image-Restoration)
as a ratlit :class:`~ratlit.models.RAT` that computes their function.

Their state dict differs from ours in form only: 1x1 convolutions (R-MSA's qkv and output projection, both MLPs)
where ratlit has linears, layer scales shaped ``[1, C, 1, 1]`` where ratlit's are ``[C]``, other module names.
The options that make the function equal are :data:`OFFICIAL_OPTIONS` (docs/models.md, "The authors' weights").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from ratlit.models.rat import RAT
from ratlit.utils.errors import InputError

# RAT options under which ratlit computes the public code's function; the rest is read off the weights.
OFFICIAL_OPTIONS = {
    "attention": "rmsa",
    "scale_by": "heads",              # scores times heads ** -0.5
    "downsample": "conv",             # 2x2 stride-2 conv with bias
    "label_downsampling": "nearest",  # F.interpolate(scale_factor=1/4, mode="nearest"): top-left pixel of each cell
    "mask_value": -1000.0,            # lambda
    "norm_eps": 1e-6,                 # their LayerNorm2d in the RAT layers
    "middle_residual": True,          # x + middle(x) around all RAT groups
}
# Not in the state dict: the public code fixes them.
OFFICIAL_HEADS = 8
OFFICIAL_WINDOW = 4
SHOWN_KEYS = 5

# Their name (a RAT layer's part after ``middle_blks.<g>.layers.<l>.``) -> ours, and how the tensor changes.
_LAYER_PARTS = {
    "norm_ra.": ("norm1.", None), "ra.qkv.": ("attn1.qkv.", "conv1x1"), "ra.project_out.": ("attn1.proj.", "conv1x1"),
    "norm_ra_mlp.": ("norm2.", None), "mlp_ra.fc1.": ("mlp1.fc1.", "conv1x1"), "mlp_ra.fc2.": ("mlp1.fc2.", "conv1x1"),
    "norm_wa.": ("norm3.", None), "wa.qkv.": ("attn2.qkv.", None), "wa.proj_out.": ("attn2.proj.", None),
    "norm_wa_mlp.": ("norm4.", None), "mlp_wa.fc1.": ("mlp2.fc1.", "conv1x1"), "mlp_wa.fc2.": ("mlp2.fc2.", "conv1x1"),
}
_NAF_PART = r"(?:norm[12]|conv[1-5]|sca\.1)\.(?:weight|bias)|beta|gamma"
_RULES = (  # (their name, our name or a function of the match)
    (r"(intro|ending)\.(weight|bias)", r"\1.\2"),
    (rf"((?:encoders|decoders)\.\d+\.\d+\.(?:{_NAF_PART}))", r"\1"),
    (r"downs\.(\d+)\.(weight|bias)", r"downs.\1.0.\2"),
    (r"ups\.(\d+)\.0\.weight", r"ups.\1.0.weight"),
    (r"middle_blks\.(\d+)\.conv\.(weight|bias)", r"middle.\1.conv.\2"),
)
_LAYER = re.compile(r"middle_blks\.(\d+)\.layers\.(\d+)\.(.+)")


def official_name(key: str) -> tuple[str, str | None] | None:
    """Our parameter name for the authors' ``key`` and its reshaping (``conv1x1``, ``layer_scale`` or None);
    None where the authors' network has no such parameter."""
    for pattern, target in _RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(target), None
    match = _LAYER.fullmatch(key)
    if match is None:
        return None
    group, layer, part = match.groups()
    prefix = f"middle.{group}.layers.{layer}."
    if part in ("lambda_ra", "lambda_wa"):
        return prefix + ("scale1" if part == "lambda_ra" else "scale2"), "layer_scale"
    for theirs, (ours, reshape) in _LAYER_PARTS.items():
        if part.startswith(theirs) and part[len(theirs):] in ("weight", "bias"):
            return prefix + ours + part[len(theirs):], reshape if part.endswith("weight") else None
    return None


def _count(keys: list[str], pattern: str) -> dict[int, int]:
    """``{outer index: number of distinct inner indices}`` over keys matching ``pattern`` (two groups)."""
    found: dict[int, set[int]] = {}
    for key in keys:
        match = re.match(pattern, key)
        if match:
            found.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    return {outer: len(inner) for outer, inner in found.items()}


def official_options(state_dict: Mapping[str, Tensor], num_heads: int = OFFICIAL_HEADS,
                     window_size: int = OFFICIAL_WINDOW) -> dict:
    """RAT constructor arguments for the authors' weights: the architecture read off the state dict (channels,
    width, blocks per level, groups, layers, MLP ratio) and :data:`OFFICIAL_OPTIONS`."""
    keys = list(state_dict)
    intro = state_dict["intro.weight"]
    levels = len({int(re.match(r"downs\.(\d+)\.", k).group(1)) for k in keys if k.startswith("downs.")})
    enc = _count(keys, r"encoders\.(\d+)\.(\d+)\.")
    dec = _count(keys, r"decoders\.(\d+)\.(\d+)\.")
    groups = _count(keys, r"middle_blks\.(\d+)\.layers\.(\d+)\.")
    num_groups = len({int(re.match(r"middle_blks\.(\d+)\.", k).group(1)) for k in keys if k.startswith("middle_blks.")})
    layers = sorted(set(groups.values())) or [1]
    if len(layers) > 1:
        raise InputError(f"the groups of RAT layers hold different numbers of layers: {groups}")
    options = {
        "in_channels": int(intro.shape[1]),
        "width": int(intro.shape[0]),
        "enc_blocks": [enc.get(i, 0) for i in range(levels)],
        # Their decoders[0] is the deepest level; ratlit builds its decoders from dec_blocks reversed.
        "dec_blocks": [dec.get(i, 0) for i in reversed(range(levels))],
        "num_groups": num_groups,
        "layers_per_group": layers[0],
        "num_heads": num_heads,
        "window_size": window_size,
        "mlp_ratio": 2.0,
        **OFFICIAL_OPTIONS,
    }
    fc1 = state_dict.get("middle_blks.0.layers.0.mlp_ra.fc1.weight")
    if fc1 is not None:
        options["mlp_ratio"] = fc1.shape[0] / fc1.shape[1]
    return options


def strip_wrapper(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The state dict without ``nn.DataParallel``'s ``module.`` prefix (where every key has it)."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else "")


def convert_state_dict(state_dict: Mapping[str, Tensor], target: Mapping[str, Tensor],
                       source: str = "the state dict") -> dict[str, Tensor]:
    """The authors' tensors under our names and in our shapes (``target``: our RAT's state dict).

    Raises one ValueError naming ``source`` and the first keys that map to nothing in ``target``, the first of
    ``target``'s keys that nothing maps to, or the first shape that differs."""
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    mismatched: list[str] = []
    for key, value in state_dict.items():
        named = official_name(key)
        if named is None or named[0] not in target:
            unmapped.append(key)
            continue
        ours, reshape = named
        want = target[ours].shape
        if reshape == "conv1x1" and value.shape == (*want, 1, 1):
            value = value.reshape(want)
        elif reshape == "layer_scale" and value.shape == (1, *want, 1, 1):
            value = value.reshape(want)
        if value.shape != want:
            mismatched.append(f"{key} {tuple(value.shape)} (expected {tuple(want)} for {ours})")
        converted[ours] = value
    if unmapped:
        raise InputError(f"{source} is not the authors' RAT state dict (Model_RAT.py): keys with no place in the "
                         f"network: {_listed(unmapped)}")
    missing = [k for k in target if k not in converted]
    if missing:
        raise InputError(f"{source} lacks parameters of the authors' RAT: {_listed(missing)}")
    if mismatched:
        raise InputError(f"{source}: shapes differ from the authors' RAT: {_listed(mismatched)}")
    return converted


def load_official(path: str | Path) -> dict[str, Tensor]:
    """The authors' state dict from a ``.pth`` file (``torch.save(model.state_dict())``), read with
    ``weights_only=True``; a DataParallel ``module.`` prefix is dropped."""
    from ratlit.utils.files import load_weights

    loaded = load_weights(Path(path), "weights file")
    if "ratlit_config" in loaded:
        raise InputError(f"{path} is a ratlit checkpoint already, not the authors' state dict")
    if not all(isinstance(v, Tensor) for v in loaded.values()):
        kinds = sorted({k for k, v in loaded.items() if not isinstance(v, Tensor)})
        raise InputError(f"{path} is not a plain state dict (entries that are not tensors: {_listed(kinds)})")
    return strip_wrapper(loaded)


def from_official(state_dict_or_path: Mapping[str, Tensor] | str | Path, num_heads: int = OFFICIAL_HEADS,
                  window_size: int = OFFICIAL_WINDOW, region_impl: str = "auto") -> RAT:
    """A RAT holding the authors' weights, ``model(lq [B, C, H, W], regions [B, H, W]) -> [B, C, H, W]``, equal to
    their ``RAT()(lq, regions)`` (docs/models.md, "The authors' weights"); in eval mode.

    ``num_heads`` and ``window_size`` are fixed in the public code (8, 4), not stored in its weights.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        return official_rat(load_official(state_dict_or_path), str(state_dict_or_path), num_heads, window_size,
                            region_impl)[0]
    return official_rat(strip_wrapper(state_dict_or_path), "the given state dict", num_heads, window_size,
                        region_impl)[0]


def official_rat(state_dict: Mapping[str, Tensor], source: str, num_heads: int = OFFICIAL_HEADS,
                 window_size: int = OFFICIAL_WINDOW, region_impl: str = "auto") -> tuple[RAT, dict]:
    """:func:`from_official` on a loaded state dict (errors name ``source``); also returns the RAT's options."""
    intro = state_dict.get("intro.weight")
    if intro is None or intro.ndim != 4:
        unmapped = [k for k in state_dict if official_name(k) is None] or list(state_dict)
        raise InputError(f"{source} is not the authors' RAT state dict (Model_RAT.py): no 4-d intro.weight; "
                         f"first keys with no place in the network: {_listed(unmapped)}")
    options = official_options(state_dict, num_heads, window_size)
    model = RAT(**options, region_impl=region_impl)
    converted = convert_state_dict(state_dict, model.state_dict(), source)
    with torch.no_grad():
        model.load_state_dict(converted)
    return model.eval(), options
