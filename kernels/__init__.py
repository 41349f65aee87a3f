"""LLM serving kernels: plain-PyTorch references and Triton implementations.

    from kernels import get_ops
    ops = get_ops(device)          # reference on CPU, Triton on CUDA
    out = ops.paged_attention(...)

`reference` and `triton_ops` expose identical function names/signatures.
Set LLM_KERNELS=reference or LLM_KERNELS=triton to force one set.
`triton_ops` is imported lazily so that importing this package never needs
Triton (e.g. on a CPU-only box that only runs the references).
"""

from __future__ import annotations

import importlib
import os

import torch

from . import reference
from .heuristics import choose_num_splits

__all__ = ["reference", "triton_ops", "get_ops", "choose_num_splits"]

_BACKENDS = ("reference", "triton")


def __getattr__(name):
    if name == "triton_ops":
        return importlib.import_module(".triton_ops", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_ops(device=None):
    """Return the kernel module to use for `device`.

    LLM_KERNELS=reference|triton overrides the choice; otherwise CUDA devices
    get the Triton kernels and everything else the references.
    """
    forced = os.environ.get("LLM_KERNELS", "").strip().lower()
    if forced:
        if forced not in _BACKENDS:
            raise ValueError(f"LLM_KERNELS must be one of {_BACKENDS}, got {forced!r}")
        backend = forced
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        backend = "triton" if dev.type == "cuda" else "reference"
    if backend == "reference":
        return reference
    return importlib.import_module(".triton_ops", __name__)
