"""CUDA graphs for the training step (PERFORMANCE.md lever 8): a function of tensors with static shapes is
run eagerly for its first calls, then captured once and replayed, so its thousands of kernels cost one launch.

`StaticGraph(fn, device)` keeps static copies of fn's tensor inputs; every call copies the new inputs into
them. On CUDA the first `warmup` calls run fn eagerly on a side stream (lazy initialisation: cuBLAS handles,
optimizer state, autograd's streams, compiled kernels), the next call captures fn into a graph and replays
it, and every later call only replays: the outputs are the same tensors each time, overwritten by the next
call. Every call does its work exactly once (a capture alone runs nothing), so a training run gets no extra
update. fn must not synchronise with the host, its shapes must not depend on values, and the tensors it
reads besides its inputs (parameters, optimizer state) must keep their storage (in-place updates only).

On other devices fn runs eagerly on the static inputs and its outputs are copied into persistent buffers:
the graph's memory semantics (inputs copied in, outputs reused) without capture, for the CPU tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields, is_dataclass, replace
from typing import Any

import torch

WARMUP_CALLS = 3


def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], tree: Any) -> Any:
    """Apply fn to every tensor in nested dicts, lists, tuples and dataclasses; other leaves stay."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(tree_map(fn, v) for v in tree)
    if is_dataclass(tree) and not isinstance(tree, type):
        return replace(tree, **{f.name: tree_map(fn, getattr(tree, f.name)) for f in fields(tree)})
    return tree


def tree_tensors(tree: Any) -> list[torch.Tensor]:
    """The tensors of a tree, in tree_map's order."""
    found: list[torch.Tensor] = []
    tree_map(lambda t: found.append(t) or t, tree)
    return found


def copy_tree(dst: Any, src: Any) -> None:
    """Copy src's tensors into dst's (same structure and shapes), skipping tensors that already are dst's."""
    targets, sources = tree_tensors(dst), tree_tensors(src)
    if len(targets) != len(sources):
        raise ValueError(f"static graph called with {len(sources)} tensors, captured with {len(targets)}")
    for target, source in zip(targets, sources, strict=True):
        if target.shape != source.shape:
            raise ValueError(f"static graph input of shape {tuple(source.shape)}, captured with {tuple(target.shape)}")
        if target.data_ptr() != source.data_ptr():
            target.copy_(source, non_blocking=True)


class StaticGraph:
    """fn(*inputs) over static buffers, replayed as one CUDA graph after `warmup` eager calls on CUDA."""

    def __init__(self, fn: Callable[..., Any], device: torch.device | str, warmup: int = WARMUP_CALLS):
        self.fn, self.device, self.warmup = fn, torch.device(device), warmup
        self.capture = self.device.type == "cuda"
        self.calls = 0
        self.inputs: Any = None
        self.outputs: Any = None
        self.graph: torch.cuda.CUDAGraph | None = None

    def __call__(self, *args: Any) -> Any:
        if self.inputs is None:
            self.inputs = tree_map(lambda t: t.detach().clone(), args)
        else:
            copy_tree(self.inputs, args)
        self.calls += 1
        if self.graph is not None:
            self.graph.replay()
            return self.outputs
        if not self.capture:
            out = self.fn(*self.inputs)
            if self.outputs is None:
                self.outputs = tree_map(lambda t: t.detach().clone(), out)
            else:
                copy_tree(self.outputs, out)
            return self.outputs
        if self.calls <= self.warmup:
            main, side = torch.cuda.current_stream(self.device), torch.cuda.Stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                out = self.fn(*self.inputs)
            main.wait_stream(side)
            return out
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.outputs = self.fn(*self.inputs)
        graph.replay()  # the capture recorded the work; this call's work is the first replay
        self.graph = graph
        return self.outputs
