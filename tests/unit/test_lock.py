"""One lock for every install (issue 22): requirements/lock.txt agrees with pyproject.toml, each
derived lock (images, Bento) has its versions, the images and the Bento install from them, and
.venv holds exactly the lock."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from scripts.lockfile import read_lock, read_pins

REPO = Path(__file__).resolve().parents[2]
REQ = REPO / "requirements"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# PyPI's CUDA torch brings these; the CPU lock has none of them.
CUDA_ONLY = re.compile(r"^(nvidia-(?!ml-py$).*|triton|cuda-.*)$")  # nvidia-ml-py: NVML, no CUDA


def _requirements(group: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(d).name): Requirement(d) for d in group}


DECLARED = _requirements(PROJECT["dependencies"])
DEV = _requirements(PROJECT["optional-dependencies"]["dev"])
FIRST_PARTY = {"roadseg", "bento", "components", "pipelines", "tests", "scripts"}


@pytest.fixture(scope="module")
def lock() -> dict[str, str]:
    return read_lock(REQ / "lock.txt")


def test_lock_satisfies_every_declared_dependency(lock: dict[str, str]) -> None:
    for name, req in {**DECLARED, **DEV}.items():
        assert name in lock, f"pyproject.toml declares {req}, lock.txt lacks it: run `make lock`"
        assert req.specifier.contains(lock[name], prereleases=True), (
            f"lock.txt pins {name}=={lock[name]}, pyproject.toml asks {req}: run `make lock`"
        )


def test_lock_holds_nothing_the_project_does_not_need() -> None:
    """Every pin is declared in pyproject.toml or required by another pin (pip-compile's
    `# via`): a dependency dropped from pyproject.toml and left in the lock fails here."""
    pins = read_pins(REQ / "lock.txt")
    for name, pin in pins.items():
        assert pin.via, f"{name}: no `# via` in lock.txt"
        for parent in pin.via:
            if parent.startswith("roadseg"):
                assert name in DECLARED or name in DEV, f"lock.txt says roadseg needs {name}"
            else:
                assert canonicalize_name(parent) in pins, f"{name} via {parent}, not in lock.txt"
    direct = {n for n, p in pins.items() if any(v.startswith("roadseg") for v in p.via)}
    assert direct == set(DECLARED) | set(DEV)


def test_lock_is_for_cpu_torch_with_hashes(lock: dict[str, str]) -> None:
    pins = read_pins(REQ / "lock.txt")
    assert lock["torch"] == str(DECLARED["torch"].specifier).removeprefix("==") + "+cpu"
    assert not [n for n in lock if CUDA_ONLY.match(n)], "CUDA wheels in the CPU lock"
    assert all(p.hashes for p in pins.values()), "every pin carries its hashes"
    header = (REQ / "lock.txt").read_text().split("\n\n")[0]
    assert "--extra=dev" in header and "pyproject.toml" in header and "Python 3.11" in header


@pytest.mark.parametrize(
    "name", ["runtime-cpu.txt", "runtime-gpu.txt", "serve.txt", "mlflow-server.txt"]
)
def test_derived_locks_have_the_lock_versions(name: str, lock: dict[str, str]) -> None:
    derived = read_lock(REQ / name)
    for package, version in derived.items():
        if name == "runtime-gpu.txt" and (CUDA_ONLY.match(package) or package == "torch"):
            continue
        if name == "mlflow-server.txt" and package not in lock:
            continue  # the server's own (auth app, S3 client): pinned there, the rest as ours
        assert package in lock, f"{name} installs {package}, which lock.txt lacks"
        assert version == lock[package], f"{name}: {package}=={version}, lock.txt {lock[package]}"
    if name.startswith("runtime"):
        assert set(derived) >= set(DECLARED), f"{name} misses a declared dependency"
        pins = read_pins(REQ / "lock.txt")
        dev_only = {
            n for n in set(DEV) - set(DECLARED) if pins[n].via == ["roadseg (pyproject.toml)"]
        }
        assert {"ruff", "mutmut", "pip-tools"} <= dev_only
        assert not set(derived) & dev_only, f"{name} installs dev tools"


def test_gpu_lock_is_pypi_cuda_torch_at_the_same_release(lock: dict[str, str]) -> None:
    gpu = read_lock(REQ / "runtime-gpu.txt")
    assert gpu["torch"] == Version(lock["torch"]).public  # 2.13.0, not 2.13.0+cpu
    assert any(CUDA_ONLY.match(n) for n in gpu), "PyPI's CUDA torch brings its NVIDIA wheels"
    assert all(read_pins(REQ / "runtime-gpu.txt")[n].hashes for n in gpu)


def test_mlflow_server_runs_the_clients_mlflow(lock: dict[str, str]) -> None:
    server = read_lock(REQ / "mlflow-server.txt")
    assert server["mlflow"] == lock["mlflow"]
    assert {"psycopg2-binary", "boto3"} <= set(server)


def test_dockerfile_installs_only_from_the_locks() -> None:
    text = (REPO / "Dockerfile").read_text()
    runs = [r for r in re.split(r"\n(?=[A-Z]+ )", text) if r.startswith("RUN ")]
    installs = [r for r in runs if "pip install" in r]
    assert installs, "the Dockerfile installs nothing?"
    for run in installs:
        for command in re.findall(r"pip install[^&;]*", run):
            locked = "--require-hashes" in command and "-r /tmp/requirements.txt" in command
            assert locked or "--no-deps" in command, f"unlocked install: {command.strip()}"
    assert not re.search(r"\b(mlflow|torch|boto3|psycopg2-binary)\S*==", text), "a pin of its own"
    assert "COPY requirements/mlflow-server.txt" in text
    assert "COPY requirements/runtime-${VARIANT}.txt" in text
    assert {"runtime-cpu.txt", "runtime-gpu.txt"} <= {p.name for p in REQ.glob("runtime-*.txt")}
    assert "!requirements/*.txt" in (REPO / ".dockerignore").read_text()


def test_bentofile_installs_the_serving_subset_of_the_lock() -> None:
    python = yaml.safe_load((REPO / "bentofile.yaml").read_text())["python"]
    assert python.get("requirements_txt") == "./requirements/serve.txt"
    assert not python.get("packages"), "a second hand-written list"
    assert python.get("lock_packages") is False  # serve.txt is the lock already
    serve = read_lock(REQ / "serve.txt")
    wanted = {canonicalize_name(n) for n in _in_names(REQ / "serve.in")}
    assert wanted <= set(serve)
    assert wanted <= set(DECLARED), "serve.in names a package pyproject.toml does not declare"


def _in_names(path: Path) -> list[str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return [Requirement(ln).name for ln in lines if ln]


def test_importing_the_service_needs_nothing_outside_serve_txt() -> None:
    """Every package imported by the project modules that `bento.service` loads (their lazy
    imports too) is in serve.txt. (Not every module in sys.modules: libraries import optional
    packages that happen to be installed here, e.g. orjson, and do without them in the Bento.)"""
    code = (
        "import json, sys\n"
        "import bento.service\n"
        "print(json.dumps(sorted(m.__file__ for n, m in list(sys.modules.items())\n"
        "    if n.split('.')[0] in ('roadseg', 'bento') and getattr(m, '__file__', None))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    files = [Path(f) for f in json.loads(out.stdout.splitlines()[-1])]
    assert any(f.parts[-2:] == ("inference", "predict.py") for f in files)
    serve = set(read_lock(REQ / "serve.txt"))
    needed = {d: f for f in files for d in _third_party_imports(f)}
    outside = {f"{d} (imported by {needed[d].name})" for d in set(needed) - serve}
    assert not outside, f"not in serve.txt: {sorted(outside)}"


def _third_party_imports(path: Path) -> set[str]:
    """Distributions (canonical names) of the absolute imports in a source file."""
    dists = metadata.packages_distributions()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        for module in modules:
            top = module.split(".")[0]
            if top in FIRST_PARTY or top in sys.stdlib_module_names:
                continue
            names = {canonicalize_name(d) for d in dists.get(top, [top])}
            # a namespace shared by several distributions (kfp, kfp-pipeline-spec): its own
            found |= {canonicalize_name(top)} & names or names
    return found


def test_every_third_party_import_is_declared() -> None:
    """Code imports only what pyproject.toml declares (uvicorn was once used and undeclared)."""
    missing = {
        f"{path.relative_to(REPO)}: {dist}"
        for folder in ("roadseg", "bento", "components", "pipelines")
        for path in (REPO / folder).rglob("*.py")
        for dist in _third_party_imports(path) - set(DECLARED)
    }
    assert not missing, "imported but not declared:\n" + "\n".join(sorted(missing))


def test_venv_holds_exactly_the_lock(lock: dict[str, str]) -> None:
    """`pip freeze` of the project's .venv equals lock.txt (plus roadseg itself, editable)."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip(f"not the project's .venv ({sys.prefix}): `make test` runs in it")
    # site-packages only, as pip freeze reads it: not sys.path, where setuptools, once
    # imported, adds its vendored packages
    site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    dists = metadata.distributions(path=site)
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in dists}
    assert installed.pop("roadseg", None) is not None
    assert installed == lock, {
        "not in lock": sorted(set(installed) - set(lock)),
        "not installed": sorted(set(lock) - set(installed)),
        "other version": sorted(n for n in set(lock) & set(installed) if lock[n] != installed[n]),
    }


def test_logged_models_record_the_locked_versions(lock: dict[str, str]) -> None:
    """An MLflow model's requirements are the lock's versions, torch without `+cpu`."""
    from roadseg.models.io import pip_requirements

    assert pip_requirements() == [
        f"torch=={Version(lock['torch']).public}",
        f"numpy=={lock['numpy']}",
        f"pillow=={lock['pillow']}",
        "roadseg",
    ]
