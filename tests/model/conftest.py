"""Model tests train on the CPU with one torch thread: on a shared 2-core machine two threads
contending with other processes made small training steps many times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
