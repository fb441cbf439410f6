"""The library internals roadseg hooks (roadseg/hooks.py): each target still exists with the
members the hook uses, at the version it was written against, and that version is the one pinned
in pyproject.toml and requirements/lock.txt."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from roadseg.hooks import HOOKS, Hook, pinned_versions, problems
from scripts.lockfile import read_lock

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda h: h.target)
def test_hooked_symbol_is_where_the_hook_expects_it(hook: Hook) -> None:
    found = problems(hook)
    assert not found, "\n".join(found)


def test_every_hooked_package_is_pinned_exactly_at_the_hooks_version() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {Requirement(d).name.lower(): Requirement(d) for d in deps}
    lock = read_lock(REPO / "requirements/lock.txt")
    for package, version in pinned_versions().items():
        assert package in declared, f"{package} is hooked (roadseg.hooks) but not declared"
        assert str(declared[package].specifier) == f"=={version}", (
            f"pyproject.toml has {declared[package]}; roadseg.hooks says {package}=={version}"
        )
        assert lock.get(package) == version, f"lock.txt: {package}=={lock.get(package)}"


def test_the_hook_modules_name_every_internal_they_import() -> None:
    """A new `_internal` import or uvicorn protocol class in roadseg/ must get a HOOKS entry."""
    targets = {h.target.partition(":")[0] for h in HOOKS}
    sources = {p: p.read_text() for p in (REPO / "roadseg").rglob("*.py")}
    for path, text in sources.items():
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] in ("from", "import"):
                module = words[1]
                private = "._internal" in module or module.startswith("uvicorn.protocols")
                if private:  # `from a.b import c` may hook a.b.c
                    assert any(t == module or t.startswith(module + ".") for t in targets), (
                        f"{path.name}: {line.strip()} is not in HOOKS"
                    )


def test_problems_names_the_hook_and_the_version_to_recheck() -> None:
    moved = Hook("uvicorn", pinned_versions()["uvicorn"], "uvicorn.config:NO_SUCH_TABLE", (),
                 "roadseg.example")  # fmt: skip
    (message,) = problems(moved)
    assert "uvicorn.config:NO_SUCH_TABLE" in message and "roadseg.example" in message
    assert f"uvicorn=={pinned_versions()['uvicorn']}" in message and "gone" in message

    upgraded = Hook("uvicorn", "0.1.0", "uvicorn.config:HTTP_PROTOCOLS", ("auto",), "x", "t.py")
    (message,) = problems(upgraded)
    assert "uvicorn==0.1.0" in message and "re-check" in message and "t.py" in message

    renamed = Hook(
        "uvicorn",
        pinned_versions()["uvicorn"],
        "uvicorn.protocols.http.auto:AutoHTTPProtocol",
        ("on_body", "on_bodies", "transport", "no_such_attribute"),
    )
    (message,) = problems(renamed)
    assert "on_bodies, no_such_attribute missing" in message

    absent = Hook("no-such-distribution", "1.0", "json:dumps")
    assert "not installed" in problems(absent)[0]


def test_one_version_per_hooked_package() -> None:
    versions = pinned_versions()
    assert {h.package for h in HOOKS} == set(versions)
    assert {"uvicorn", "bentoml", "websockets", "mlflow", "httptools"} <= set(versions)


def test_the_replaced_auto_protocols_are_the_classes_the_guards_subclass() -> None:
    """The guards replace uvicorn's "auto" entries with subclasses of what "auto" picks here; if
    an upgrade makes "auto" pick another implementation, the guards would change the protocol."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.protocols.websockets.auto import AutoWebSocketsProtocol
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    assert AutoHTTPProtocol is HttpToolsProtocol, "uvicorn's auto HTTP is not httptools"
    assert AutoWebSocketsProtocol is WebSocketsSansIOProtocol, "auto WebSocket is not sans-I/O"


def test_bentoml_looks_the_metrics_middleware_up_when_it_builds_the_app() -> None:
    """install_http_guards swaps the class in `instruments`; that only takes effect if BentoML
    imports it from there when it builds the app, not once at import."""
    import inspect

    from bentoml._internal.server import http_app

    source = inspect.getsource(http_app)
    lines = [ln for ln in source.splitlines() if "import HTTPTrafficMetricsMiddleware" in ln]
    assert lines and all(ln.startswith(" ") for ln in lines), "imported at module level now"
