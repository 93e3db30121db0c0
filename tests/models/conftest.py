"""Model tests run tiny models: one intra-op thread each (a second thread only adds synchronization,
2.5x slower on a shared 2-core box)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
