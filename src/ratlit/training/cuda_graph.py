"""CUDA-graph training: the forward, loss and backward of a training step captured once and replayed.

RAT's training step on a GPU is paced by the host (docs/performance.md): hundreds of kernel launches, the
eager region layout and the Python between compiled blocks take longer than the kernels themselves. A CUDA
graph replays all of them with one launch. Capture needs a step without host synchronisation and with fixed
shapes: RAT's FlexAttention path (the region layout and block mask are built on the GPU without the host
waiting) and the focal region loss are such a step; the packed path reads region lengths on the host and
cannot be captured (the step then runs eagerly, with a warning).

The optimiser step stays outside the graph: it reads the gradients the replay wrote into each parameter's
``.grad`` (the same tensors every replay), so Lightning's optimiser hooks, step counting, schedulers and
checkpoints work as in any run.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor, nn

from ratlit.utils.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")


def _signature(inputs: dict[str, Tensor]) -> tuple:
    return tuple((name, t.shape, t.dtype, t.device) for name, t in sorted(inputs.items()))


@contextlib.contextmanager
def _uncached_autocast(device_type: str) -> Iterator[None]:
    """The autocast state in force, without its cache of cast weights: a captured graph must cast the
    weights it reads each replay, not keep casts made during capture (torch.cuda.graph's documentation)."""
    if not torch.is_autocast_enabled(device_type):
        yield
        return
    with torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False):
        yield


@contextlib.contextmanager
def side_stream() -> Iterator[None]:
    """Run the block on a fresh CUDA stream ordered after the current one, and order the current one after it:
    where warm-up runs before a capture (lazy initialisation and allocations stay off the capture's stream)."""
    current = torch.cuda.current_stream()
    stream = torch.cuda.Stream()
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            yield
    finally:
        current.wait_stream(stream)


def capture(fn: Callable[[], T], **graph_kwargs) -> tuple[torch.cuda.CUDAGraph, T]:
    """``fn()`` recorded as a CUDA graph (not run: replay it), and what ``fn`` returned while recorded (tensors
    whose memory every replay rewrites). A capture that fails raises, with CUDA's random generator taken out of
    capture mode first (see :func:`_reset_rng_capture_state`)."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, **graph_kwargs):
            result = fn()
    except Exception:
        del graph
        _reset_rng_capture_state()
        raise
    return graph, result


class GraphedBackward:
    """``loss = step(**inputs)``: ``loss_fn(**inputs)`` and its backward, replayed from a CUDA graph.

    The first ``warmup`` calls run eagerly (on a side stream, as capture requires: lazy initialisation,
    compilation and the allocator settle there; the last of them with host synchronisations made errors);
    the next one captures the step on a copy of its inputs and replays it; later calls copy their inputs in
    and replay. Every call leaves the step's gradients in the parameters' ``.grad`` (written, not
    accumulated) and returns the loss, detached. Inputs of another shape (a last, smaller batch) run
    eagerly, into the same gradient tensors. A step that waits for the GPU, or whose capture fails, runs
    eagerly from then on, with a warning. Inputs not on CUDA: always eager, the same contract.
    """

    def __init__(self, loss_fn: Callable[..., Tensor], params: list[nn.Parameter], warmup: int = 3) -> None:
        if warmup < 2:
            # The first step initialises and compiles; the last warm-up step (not the first: compilation may
            # synchronise) checks that the step never waits for the GPU.
            raise InputError(f"warmup must be >= 2, got {warmup}")
        self.loss_fn, self.params, self.warmup = loss_fn, [p for p in params if p.requires_grad], warmup
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None
        self._static_inputs: dict[str, Tensor] = {}
        self._static_loss: Tensor | None = None
        self._signature: tuple | None = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, **inputs: Tensor) -> Tensor:
        self.calls += 1
        on_cuda = all(t.is_cuda for t in inputs.values())
        if self.graph is not None and _signature(inputs) == self._signature:
            for name, t in inputs.items():
                self._static_inputs[name].copy_(t, non_blocking=True)
            self.graph.replay()
            return self._static_loss.clone()  # the next replay overwrites the static loss
        if not on_cuda or self.failed or self.graph is not None or self.calls < self.warmup:
            return self._eager(inputs, on_side_stream=on_cuda and self.graph is None and not self.failed)
        if self.calls == self.warmup:
            return self._probe(inputs)
        return self._capture(inputs)

    def _probe(self, inputs: dict[str, Tensor]) -> Tensor:
        """The last warm-up step, with host synchronisations made errors: a step that waits for the GPU cannot
        be captured, and a failed capture would leave CUDA's random number generator unusable, so such a step
        is found here, before any capture, and runs eagerly from then on."""
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            return self._eager(inputs, on_side_stream=True)
        except RuntimeError as err:  # a real error in the step raises again from the eager rerun below
            self._give_up(f"under torch.cuda.set_sync_debug_mode('error') it raised: {str(err).splitlines()[0]}")
        finally:
            torch.cuda.set_sync_debug_mode(previous)
        return self._eager(inputs)

    def _give_up(self, why: str) -> None:
        self.failed = why
        warnings.warn(f"the training step cannot be captured as a CUDA graph ({why}); training continues without it",
                      stacklevel=2)

    def _eager(self, inputs: dict[str, Tensor], on_side_stream: bool = False) -> Tensor:
        device_type = next(iter(inputs.values())).device.type
        # After capture the gradient tensors belong to the graph: zero them and accumulate into them.
        for p in self.params:
            if p.grad is not None:
                if self.graph is not None:
                    p.grad.zero_()
                else:
                    p.grad = None
        with side_stream() if on_side_stream else contextlib.nullcontext():
            with _uncached_autocast(device_type):
                loss = self.loss_fn(**inputs)
            loss.backward()
        return loss.detach()

    def _capture(self, inputs: dict[str, Tensor]) -> Tensor:
        device_type = next(iter(inputs.values())).device.type
        static = {name: t.clone() for name, t in inputs.items()}
        for p in self.params:
            p.grad = None  # captured backward allocates the gradients in the graph's pool and writes them each replay
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the warm-up's activations: the graph keeps its own pool
        def step() -> Tensor:
            with _uncached_autocast(device_type):
                loss = self.loss_fn(**static)
            loss.backward()
            return loss

        try:
            # thread_local: data-loader threads (pinned memory) may call the CUDA API while this thread captures.
            graph, loss = capture(step, capture_error_mode="thread_local")
        except Exception as err:  # noqa: BLE001 - any capture failure: train on, eagerly
            self._give_up(f"{type(err).__name__}: {str(err).splitlines()[0]}")
            for p in self.params:
                p.grad = None
            return self._eager(inputs)
        # Detached: keeping the captured autograd graph alive would tie later eager steps to the capture stream.
        self.graph, self._static_inputs, self._static_loss = graph, static, loss.detach()
        self._signature = _signature(inputs)
        log.info("training step captured as a CUDA graph after %d eager steps", self.calls - 1)
        graph.replay()  # capture records the step; this runs it
        return self._static_loss.clone()


def _reset_rng_capture_state() -> None:
    """A capture that failed leaves CUDA's default generator in capture mode (the next random op raises
    "Offset increment outside graph capture"); one complete capture, of nothing, ends that mode."""
    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the CUDA Graph is empty"
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            pass
        del graph
