"""GPU tests: run on a machine with CUDA as ``HELIOS_TEST_CUDA=1 python -m pytest tests/gpu``.

HELIOS_TEST_CUDA=1 keeps Triton's interpreter off (tests/conftest.py), so the kernels are
compiled for the device. Without CUDA every test here is skipped (and counted as skipped).
"""

from __future__ import annotations

import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    reason = None
    if not torch.cuda.is_available():
        reason = "needs a CUDA GPU"
    elif not os.environ.get("HELIOS_TEST_CUDA"):
        reason = "set HELIOS_TEST_CUDA=1 (compiled Triton kernels, not the interpreter)"
    if reason:
        for item in items:
            if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(pytest.mark.skip(reason=reason))
