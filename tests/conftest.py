"""Shared fixtures: the real BDD100k sample (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from roadseg.config import Params, load_params
from tests.inprocess import fresh_service_asgi

REPO = Path(__file__).resolve().parent.parent
SAMPLE = Path(os.environ.get("ROADSEG_SAMPLE_DIR", REPO.parent / "shared/data/bdd100k-sample"))


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(REPO / "params.yaml")


@pytest.fixture(scope="session")
def real_sample() -> Path:
    """The 16-image real BDD100k sample, read in place (never copied into the repo)."""
    if not (SAMPLE / "images/10k").is_dir():
        pytest.skip(f"real BDD100k sample not found at {SAMPLE} (set ROADSEG_SAMPLE_DIR)")
    return SAMPLE


@pytest.fixture(autouse=True, scope="module")
def _torch_threads_restored():
    """An in-process service sets this process's torch threads as a worker's (one beside a model
    process, `serve.intra_op_threads` in it): the next module gets the count back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def one_thread():
    """torch on one thread for the test (small models: less spread from another job's load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small deterministic synthetic dataset in the BDD100k layout (train 12, val 4, test 2)."""
    from roadseg.data.synth import synthesize_dataset

    out = tmp_path_factory.mktemp("synth")
    synthesize_dataset(out, train=12, val=4, test=2, height=96, width=160, seed=0)
    return out


def _drop_closed_log_handlers() -> None:
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if getattr(getattr(handler, "stream", None), "closed", False):
                logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def _no_stale_log_handlers():
    """Libraries attach handlers to the stream CliRunner swapped in; once it is closed, their
    next record prints a '--- Logging error ---' traceback into an unrelated test's output."""
    _drop_closed_log_handlers()
    yield
    _drop_closed_log_handlers()


@pytest.fixture(scope="session")
def service_asgi():
    """A factory for `fresh_service_asgi` (call it once per in-process app)."""
    return fresh_service_asgi
