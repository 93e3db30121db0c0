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


@pytest.fixture(scope="module")
def vq():
    """A small VQ tokenizer fitted on smooth chunks, shared by the tokenizer contract tests and VQ's own."""
    from test_action_tokenizers import SMALL_VQ, smooth_chunks

    from vla.models.heads.tokenizers import VQTokenizerConfig

    return VQTokenizerConfig(**SMALL_VQ).build().fit(smooth_chunks(400, seed=0))
