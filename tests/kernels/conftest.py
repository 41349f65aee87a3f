"""Kernel tests: run on CUDA when present, else through Triton's interpreter.

TRITON_INTERPRET must be set before triton is first imported, so this
conftest sets it at import time (pytest loads it before the test modules).
"""

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_ROOT, _HERE):  # the `kernels` package and kernel_testing helpers
    if _p not in sys.path:
        sys.path.insert(0, _p)

import pytest  # noqa: E402


def pytest_configure(config):
    # Triton's interpreter trips a numpy deprecation on every scalar index.
    config.addinivalue_line(
        "filterwarnings", "ignore:Conversion of an array with ndim:DeprecationWarning")


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every kernel output starts as NaN, so unwritten elements fail the test."""
    from kernels._alloc import set_poison

    previous = set_poison(True)
    yield
    set_poison(previous)
