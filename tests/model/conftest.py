"""Model tests train on the CPU with one torch thread: on a shared 2-core machine two threads
contending with other processes made small training steps many times slower."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):  # tests/conftest.py, for every test here
    yield
