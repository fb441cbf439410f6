"""The API fuzzer: schemathesis's engine (the one behind `schemathesis run`) over the operations
the service's own `GET /docs.json` declares, with every built-in check, a fixed seed and a bounded
number of examples per operation.

One configuration for both runs: in-process (tests/integration/test_api_fuzz.py, in `make test`)
and live against `roadseg serve` (scripts/fuzz_live.py, `make fuzz-live`). Every check disabled
and every operation left out is listed below with the reason, and in docs/api/errors.md
("The API fuzzer"); tests/integration/test_api_fuzz.py checks that the two lists agree.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

SEED = 28  # issue 28

# Checks switched off, by (check, method): the reason. Nothing else is switched off.
DISABLED_CHECKS: dict[tuple[str, str], str] = {
    ("positive_data_acceptance", "POST"): (
        "every POST route takes images or a video (multipart parts, raw bodies, base64 strings); "
        "a random byte string that fits the schema (`format: binary`, `minLength: 1`) is not a "
        "JPEG, PNG or MP4, so the service rightly refuses it (415, 400, 413); JSON Schema cannot "
        'say "a decodable image". The other checks run on these routes, and every GET keeps '
        "this one"
    ),
}

# Operations left out of a run, by run ("in-process", "live") and "METHOD /path": the reason.
EXCLUDED_OPERATIONS: dict[str, dict[str, str]] = {"in-process": {}, "live": {}}


def config(key: str, examples: int, *, run: str) -> Any:
    """The schemathesis configuration of a run: the API key on every request, deterministic
    generation (Hypothesis' derandomize) from SEED, `examples` per operation and phase."""
    import schemathesis

    operations: list[dict[str, Any]] = [
        {"include-method": method, "checks": {check: {"enabled": False}}}
        for check, method in DISABLED_CHECKS
    ]
    for label in EXCLUDED_OPERATIONS[run]:
        method, path = label.split(" ", 1)
        operations.append({"include-method": method, "include-path": path, "enabled": False})
    return schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"X-API-Key": key},
            "continue-on-failure": True,  # every operation runs to the end; all failures reported
            "generation": {
                "deterministic": True,
                "max-examples": examples,
                "database": "none",  # no .hypothesis/ in the work tree
            },
            "checks": {"enabled": True},
            "operations": operations,
        }
    )


@dataclass
class Report:
    """What a run did: test cases per (operation, phase), checks run, and what went wrong."""

    cases: collections.Counter = field(default_factory=collections.Counter)
    checks: collections.Counter = field(default_factory=collections.Counter)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def operations(self) -> set[str]:
        return {label for label, _ in self.cases}

    def summary(self) -> str:
        per_op = collections.Counter()
        for (label, _), n in self.cases.items():
            per_op[label] += n
        lines = [f"{n:6d}  {label}" for label, n in sorted(per_op.items())]
        lines.append(
            f"{sum(per_op.values())} test cases over {len(per_op)} operations in "
            f"{self.seconds:.1f} s; {sum(self.checks.values())} check runs over "
            f"{len(self.checks)} checks ({', '.join(sorted(self.checks))}); "
            f"{len(self.failures)} failures, {len(self.errors)} errors"
        )
        return "\n".join(lines)

    def problems(self) -> str:
        return "\n\n".join(self.failures + self.errors)


def run(schema: Any) -> Report:
    """Run every phase of schemathesis' engine over `schema`; the report of what happened."""
    from schemathesis import engine
    from schemathesis.engine import Status, events

    report = Report()
    seen: set[tuple[str, str, str]] = set()
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            report.cases[(recorder.label, event.phase.value)] += len(recorder.cases)
            for case_id, nodes in recorder.checks.items():
                for node in nodes:
                    report.checks[node.name] += 1
                    if node.status != Status.FAILURE or node.failure_info is None:
                        continue
                    failure = node.failure_info.failure
                    key = (recorder.label, node.name, failure.title)
                    if key in seen:  # the same disagreement found again by another case
                        continue
                    seen.add(key)
                    status = _status(recorder, case_id)
                    report.failures.append(
                        f"{recorder.label} [{event.phase.value}] {node.name}: {failure.title} "
                        f"(answered {status})\n{failure.message}\n"
                        f"{node.failure_info.code_sample}"
                    )
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"{event.label}: {event.info.format()}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            report.seconds = event.running_time
            report.failures += [str(f) for f in event.failures]
    return report


def _status(recorder: Any, case_id: str) -> str:
    interaction = recorder.interactions.get(case_id)
    response = getattr(interaction, "response", None)
    return str(response.status_code) if response is not None else "nothing"
