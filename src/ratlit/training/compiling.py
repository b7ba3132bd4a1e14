"""Compiled training: ``torch.compile`` of a network's repeated blocks, with an eager switch for evaluation.

Regional compilation (as diffusers' ``compile_repeated_blocks``): a network lists the classes of its repeated
blocks in ``_repeated_blocks``; each instance is compiled in place and all instances of one class share the
compiled code, so the first step compiles a few small graphs, one per block class and input shape, instead of
the whole network. Whole-network compilation of RAT cannot keep one graph anyway: the region layout and the
region attention core are data-dependent and run eagerly (``torch.compiler.disable``), and a graph break
inside the loop over RAT groups makes dynamo give up on the network's forward and fall back to compiling
every submodule on its own, with automatic dynamic shapes (which inductor failed to lower for the NAFBlocks,
torch 2.13).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ratlit.utils.errors import InputError

# model.compile: true, false, or auto: compiled on CUDA (with cuda_graph=auto the step is also replayed: the fastest
# measured step), eager on the CPU, where a long first step buys little; the figures are in docs/performance.md.
COMPILE_CHOICES = (True, False, "auto")


def compile_choice(value: bool | str) -> bool | str:
    """``model.compile`` checked: True, False or ``"auto"`` (one error naming the key otherwise)."""
    if isinstance(value, str) and value == "auto":
        return value
    if value in (True, False) and not isinstance(value, str):
        return bool(value)
    raise InputError(f"model.compile must be true, false or auto, got {value!r}")


def compiles_on(choice: bool | str, device: torch.device) -> bool:
    """Whether ``model.compile`` ``choice`` (see :func:`compile_choice`) compiles a training run on ``device``."""
    return torch.device(device).type == "cuda" if choice == "auto" else bool(choice)


def compile_repeated_blocks(net: nn.Module, **compile_kwargs) -> list[str]:
    """Compile ``net``'s repeated blocks in place (the whole network if it lists none); returns what was compiled.

    Each instance's ``forward`` is replaced by its compiled self: parameters and state-dict keys stay as
    they are, and dynamo's cache (and its recompile limit) is per block class, so a class seen at a few
    shapes (RAT's NAFBlocks at two widths) never exhausts it. ``dynamic`` defaults to False: a training run
    sees one patch size, and static shapes give the best kernels; a new shape (a last, smaller batch)
    compiles once more.
    """
    compile_kwargs.setdefault("dynamic", False)
    names = set(getattr(net, "_repeated_blocks", ()))
    targets = [m for m in net.modules() if type(m).__name__ in names] if names else [net]
    if not targets:
        raise ValueError(f"{type(net).__name__}._repeated_blocks names {sorted(names)}, none of which it contains")
    for module in targets:
        module.forward = torch.compile(module.forward, **compile_kwargs)
    return [type(m).__name__ for m in targets]


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run compiled modules eagerly inside this block (evaluation on whole images of any size: no recompiles)."""
    with torch.compiler.set_stance("force_eager"):
        yield
