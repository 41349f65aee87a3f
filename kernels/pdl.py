"""Programmatic dependent launch (PDL): let a kernel start while the ones before it run.

In a batch-1 decode step the GPU runs ~150 small kernels back to back, and each boundary costs a
few microseconds of launch, ramp-up and tail in which HBM sits idle (perf/bench_small_linear.py:
a 1B model's 8 MB projections take 6.6 us to read 2.8 us worth of bytes). On Hopper a kernel
launched with PDL may begin once every program of the kernel before it has executed
`griddepcontrol.launch_dependents` (or exited); `griddepcontrol.wait` then blocks until that kernel
has completed and its writes are visible.

A kernel signals either right after its wait (at most two kernels in flight: the next one starts
when this one's predecessor has finished) or, where the next kernel has useful reads to issue
early, at its very start (`let_next_launch`): the split decode attention reads its first KV tile
while the RoPE kernel before it runs (and, in the kernel benchmark's graph of back-to-back
attention calls, the next call reads its tiles while the merge runs). Signalling
at the start in every kernel was measured slower (batch-1 1B graph 1.22 vs 1.13 ms, perf/results/
2026-11-24-h100/early_pdl/), and so was adding the RMSNorm and the split-K sum to the three.

Each program first reads what no kernel of the step writes (the weights, the step's index inputs,
the KV cache of earlier steps' tokens), then waits (`wait_for_previous`) before its first read of a
buffer a recent kernel wrote and before any write. Every program waits before it exits, those
with nothing to do included, so a kernel completes only after the kernel before it completed: the
chain is transitive, and everything after the wait may read anything written earlier in the step. The reads before the wait must never touch a
buffer one of our kernels writes in the same step, as several kernels may be before their wait
(tests/kernels/test_kernels_attention.py checks the attention's early reads with a stale copy).
The step's index inputs (positions, slots, context lengths, block tables) are written by the
inputs' copy to the device and by prepare_step_inputs (kernels/step_inputs.py), which are launched
without PDL and so complete before any later kernel starts: that kernel must never take PDL.
CUDA graph capture records the launches as programmatic edges.

LLM_PDL (read once per process): 0 off; 1 every kernel signals after its wait (before this rule,
1 meant on); 2 every kernel signals at its start; unset: as described above.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

__all__ = ["pdl_mode", "let_next_launch", "wait_for_previous", "signal_next_launch"]

PDL_OFF, PDL_AFTER_WAIT, PDL_AT_START = 0, 1, 2


def pdl_mode(device: torch.device, signal_at_start: bool = False) -> int:
    """The PDL constexpr of a kernel launched on `device`: PDL_OFF (never in the interpreter or
    on CPU), else PDL_AT_START for kernels whose successor gains from starting early
    (`signal_at_start`), PDL_AFTER_WAIT for the others (LLM_PDL=1 / 2 force one or the other)."""
    mode = _pdl_mode(device.type, device.index)
    if mode is None:
        return PDL_AT_START if signal_at_start else PDL_AFTER_WAIT
    return mode


@functools.lru_cache(maxsize=None)
def _pdl_mode(device_type: str, device_index: int | None) -> int | None:
    """PDL_OFF, a mode forced by LLM_PDL, or None (each kernel's own choice)."""
    setting = os.environ.get("LLM_PDL", "").strip()
    if setting == "0" or os.environ.get("TRITON_INTERPRET") == "1" or device_type != "cuda":
        return PDL_OFF
    index = device_index if device_index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index)[0] < 9:
        return PDL_OFF
    return {"1": PDL_AFTER_WAIT, "2": PDL_AT_START}.get(setting)


@triton.jit
def let_next_launch(PDL: tl.constexpr):
    """First thing in every program: with PDL_AT_START, the next kernel may start now."""
    if PDL == 2:
        gdc_launch_dependents()


@triton.jit
def wait_for_previous(PDL: tl.constexpr, SIGNAL: tl.constexpr = True):
    """Wait until the previous kernel has completed and its writes are visible. With
    PDL_AFTER_WAIT the next kernel may launch from here, unless SIGNAL is False: then the kernel
    signals later itself (`signal_next_launch`)."""
    if PDL != 0:
        gdc_wait()
    if PDL == 1 and SIGNAL:
        gdc_launch_dependents()


@triton.jit
def signal_next_launch(PDL: tl.constexpr):
    """The PDL_AFTER_WAIT signal of a kernel that waited with SIGNAL=False (a later point of the
    same program; every program must reach it or exit)."""
    if PDL == 1:
        gdc_launch_dependents()
