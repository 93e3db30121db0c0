"""The GPU suite (`make test-gpu`): every test in this folder is marked ``gpu`` and skips without CUDA.

Each test is small (tiny presets, a few steps) and asserts what can go wrong only on a GPU: bf16 numerics,
inductor kernels and CUDA graphs, the compiled server's worker thread, DeepSpeed on a real device, EGL on
the NVIDIA driver, and the memory of a pi0-scale step. ``scripts/gpu/check.sh`` runs it on a lent machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # marks before `-m gpu` selects
def pytest_collection_modifyitems(config, items):
    needs_cuda = pytest.mark.skip(reason="needs a CUDA GPU (make test-gpu on a GPU machine)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.gpu)
            if not torch.cuda.is_available():
                item.add_marker(needs_cuda)


@pytest.fixture
def cuda() -> torch.device:
    torch.cuda.reset_peak_memory_stats()
    return torch.device("cuda")
