"""The API fuzzer in the suite (issue 28): schemathesis, from the service's own `GET /docs.json`,
against the in-process app, every built-in check, a fixed seed and EXAMPLES per operation and
phase. Zero failures: a disagreement between the service and its document fails here.

The configuration, the disabled checks and the excluded operations with their reasons are in
tests/api_fuzz.py (shared with the longer live run, `make fuzz-live`); docs/api/errors.md lists
them too, and the last test checks that it does.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from roadseg.testing import params_with, save_random_checkpoint
from tests import api_fuzz
from tests.inprocess import fresh_service_asgi

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

KEY = "fuzz-key"
EXAMPLES = 100  # per operation and phase: about 30 s on a 2-core machine
DOCS = Path(__file__).resolve().parents[2] / "docs/api/errors.md"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> api_fuzz.Report:
    """One run of the fuzzer over a fresh in-process service (a random base-4 U-Net, the key)."""
    import schemathesis
    from schemathesis.python.asgi import shutdown_lifespans

    tmp = tmp_path_factory.mktemp("fuzz")
    save_random_checkpoint(tmp / "model.pt", base_channels=4, seed=0, epoch=3)
    (tmp / "prometheus").mkdir()
    env = {
        "ROADSEG_MODEL_URI": str(tmp / "model.pt"),
        "ROADSEG_MONITOR_DIR": str(tmp / "monitoring"),
        "ROADSEG_API_KEY": KEY,
        "ROADSEG_PARAMS": str(params_with(tmp / "params.yaml", {})),
        # `bentoml serve` sets it; without it BentoML's GET /metrics fails (a 500 problem)
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "prometheus"),
    }
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        config = api_fuzz.config(KEY, EXAMPLES, run="in-process")
        # schemathesis' own ASGI client: the app's lifespan runs once, until shutdown_lifespans
        schema = schemathesis.openapi.from_asgi("/docs.json", fresh_service_asgi(), config=config)
        result = api_fuzz.run(schema)
        print(result.summary())
        yield result
    finally:
        shutdown_lifespans()
        mp.undo()


def test_the_fuzzer_finds_no_disagreement_between_the_service_and_its_document(report) -> None:
    assert not report.failures and not report.errors, report.problems()


def test_every_operation_of_the_document_was_fuzzed_with_every_check(report) -> None:
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()

    excluded = set(api_fuzz.EXCLUDED_OPERATIONS["in-process"])
    assert len(report.operations) >= 13 and not report.operations & excluded
    for label in report.operations:
        for phase in ("coverage", "fuzzing"):
            assert report.cases[(label, phase)] > 0, (label, phase, report.summary())
    built_in = set(CHECKS.get_all_names()) - {"max_response_time"}  # runs only given a limit
    assert built_in <= set(report.checks), built_in - set(report.checks)


def test_the_docs_list_every_disabled_check_and_excluded_operation() -> None:
    text = DOCS.read_text()
    section = text.split("## The API fuzzer", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(\w+)` \| `?(\w+)`? \|", section, re.M))
    assert listed == set(api_fuzz.DISABLED_CHECKS), listed
    for run, operations in api_fuzz.EXCLUDED_OPERATIONS.items():
        for label in operations:
            assert f"`{label}`" in section, (run, label)
