"""Output allocation shared by the Triton wrappers.

Kernels must write every output element.  Tests (and the benchmark's
correctness check) switch on poisoning so that outputs start as NaN instead
of whatever torch.empty returns: an element a kernel forgot to write then
shows up as NaN in the comparison with the reference.
"""

from __future__ import annotations

import os

import torch

_poison = os.environ.get("LLM_KERNELS_POISON", "0") == "1"


def set_poison(enabled: bool) -> bool:
    """Enable/disable NaN-poisoned outputs; returns the previous setting."""
    global _poison
    previous, _poison = _poison, bool(enabled)
    return previous


def poison_enabled() -> bool:
    return _poison


def new_output(shape, dtype, device) -> torch.Tensor:
    """torch.empty, or a NaN-filled tensor when poisoning is on."""
    if _poison:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
