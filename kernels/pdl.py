"""Programmatic dependent launch (PDL): let a kernel start while the one before it finishes.

In a batch-1 decode step the GPU runs ~150 small kernels back to back, and each boundary costs a
few microseconds of launch, ramp-up and tail in which HBM sits idle (perf/bench_small_linear.py:
a 1B model's 8 MB projections take 6.6 us to read 2.8 us worth of bytes). On Hopper a kernel
launched with PDL may begin once every program of the previous kernel has signalled
`griddepcontrol.launch_dependents`; it must execute `griddepcontrol.wait` before touching anything
the previous kernel writes. Our kernels do exactly that at their start (`wait_for_previous`), and
the linear layers first issue the loads of their weights, which nothing in the step writes, so
those reads overlap the previous kernel's tail.

Every PDL kernel waits before its first dependent read or any write, in every program: that keeps
the chain transitive (a kernel that completes has seen its predecessor complete), so reading a
buffer written two kernels earlier is safe too. CUDA graph capture records the launches as
programmatic edges. LLM_PDL=0 (read once per process) turns it off.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

__all__ = ["pdl_enabled", "wait_for_previous"]


def pdl_enabled(device: torch.device) -> bool:
    """Whether kernels on `device` are launched with PDL (never in the interpreter or on CPU).
    Asked at every launch, so the answer (and LLM_PDL) is worked out once per device."""
    return _pdl_enabled(device.type, device.index)


@functools.lru_cache(maxsize=None)
def _pdl_enabled(device_type: str, device_index: int | None) -> bool:
    if os.environ.get("LLM_PDL", "1").strip() == "0" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    if device_type != "cuda":
        return False
    index = device_index if device_index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit
def wait_for_previous(PDL: tl.constexpr):
    """Wait until the previous kernel has finished and its writes are visible, then let the next
    kernel launch (it waits the same way before reading what this one writes)."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
