"""MLflow helpers: tracking URI, experiment name, dataset version, git commit, and a run that
survives its tracking server going away.

The tracking URI is read from `MLFLOW_TRACKING_URI` by the entry points (CLI, components) and
passed in (`resolve_tracking_uri`); the default is `mlruns.db` in the working directory, so
nothing needs a server.

`TrackedRun` makes every logging call once: MLflow's HTTP client already retries connection
errors, read errors and 429/5xx answers with backoff (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, shortened
by `configure_http` so a dead server is noticed in seconds). When a call still fails (server down,
or gone mid-run) it says so once, switches to a local SQLite store (`<fallback_dir>/mlruns.db`),
replays what it had already logged into a new run there, and carries on: training never stops
because of tracking, and checkpoints are written independently of it. Inspect or copy the
fallback run later with `mlflow ui --backend-store-uri sqlite:///<fallback_dir>/mlruns.db`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

DEFAULT_STORE = "mlruns.db"  # the SQLite store when no URI is given, in the working directory
# MLflow 3 opens an experiment on its GenAI pages unless it is marked as model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
CONTEXT_TAG = "mlflow.data.context"


def resolve_tracking_uri(*candidates: str | None) -> str:
    """The first non-blank candidate, else `./mlruns.db` as an absolute SQLite URI.

    Entry points pass, in this order, their `--tracking-uri` flag (if they have one) and the
    `MLFLOW_TRACKING_URI` value. The default is absolute so subprocesses started elsewhere (the
    tasks of a local pipeline run) write to the same store.
    """
    for value in candidates:
        if value and value.strip():
            return value.strip()
    return f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def experiment_name(dataset: str, configured: str | None = None) -> str:
    """`train.experiment` when set, else the dataset name (`bdd100k`, `kitti_road`)."""
    return configured or dataset


def ensure_experiment(client: Any, name: str, artifact_location: str | None = None) -> str:
    """Id of experiment `name`, created (or tagged) as a model-training experiment.

    `client` is an `MlflowClient`; `artifact_location` only applies when it is created.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        tags = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        return client.create_experiment(name, artifact_location=artifact_location, tags=tags)
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def dataset_input(name: str, digest: str, source: str, context: str) -> Any:
    """An MLflow dataset input (`mlflow.entities.DatasetInput`) without the data itself.

    Args:
        name: what the runs table shows, e.g. `bdd100k-train`. MLflow keeps one input per
            (name, digest) and run, so each split needs its own name to keep its context.
        digest: the dataset version (`dvc:<md5>` or `sha256:<hash>`).
        source: a local path, or `<git repo>@<rev>:<path>` for a DVC revision.
        context: the split (`train`, `val`, ...), shown as the input's context.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    repo, at, rest = source.partition("@")
    if at and ":" in rest and not Path(source).exists():
        rev, _, path = rest.partition(":")
        source_type, spec = "dvc", {"uri": repo, "rev": rev, "path": path}
    else:
        source_type, spec = "local", {"uri": Path(source).resolve().as_uri()}
    dataset = Dataset(name=name, digest=digest, source_type=source_type, source=json.dumps(spec))
    return DatasetInput(dataset, [InputTag(CONTEXT_TAG, context)])


def _dvc_md5(data_dir: Path) -> str | None:
    """md5 of the `.dvc` file whose `outs` path is `data_dir`, looked up beside it and upwards."""
    target = data_dir.resolve()
    candidates = [target.with_name(target.name + ".dvc")]
    for folder in [target.parent, *target.parents][:4]:
        candidates += sorted(folder.glob("*.dvc"))
    for dvc_file in candidates:
        if not dvc_file.is_file():
            continue
        try:
            meta = yaml.safe_load(dvc_file.read_text()) or {}
        except yaml.YAMLError:
            continue
        for out in meta.get("outs", []) or []:
            if (dvc_file.parent / str(out.get("path", ""))).resolve() == target and out.get("md5"):
                return str(out["md5"])
    return None


def content_hash(data_dir: Path) -> str:
    """sha256 over the relative paths and bytes of every file under `data_dir` (sorted)."""
    h = hashlib.sha256()
    root = Path(data_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        with path.open("rb") as f:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def dataset_version(data_dir: Path) -> str:
    """`dvc:<md5>` when the directory is tracked by a `.dvc` file, else `sha256:<content hash>`."""
    md5 = _dvc_md5(Path(data_dir))
    return f"dvc:{md5}" if md5 else f"sha256:{content_hash(Path(data_dir))}"


def git_commit(cwd: Path | None = None) -> str | None:
    """HEAD commit (suffixed `-dirty` when tracked files changed), or None outside a repository."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def configure_http(max_retries: int = 2, timeout_s: int = 10) -> None:
    """Shorten MLflow's own HTTP retries (default: minutes) unless the user set them, so a dead
    server is noticed in seconds and our fallback takes over."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def forget_active_run(run_id: str | None) -> None:
    """Drop the fluent API's active run (and stop its system-metrics thread) without contacting
    its tracking server, which may be gone: `mlflow.end_run()` would try to set its status there.

    The one place that touches MLflow private internals: `mlflow.tracking.fluent`'s
    `_active_run_stack` and `run_id_to_system_metrics_monitor` (MLflow 3.x).
    `tests/unit/test_training_parts.py::test_forget_active_run_*` fails when an upgrade changes them.

    Raises:
        RuntimeError: MLflow no longer has these internals (naming the version).
    """
    import mlflow
    from mlflow.tracking import fluent

    try:
        monitors = fluent.run_id_to_system_metrics_monitor
        stack = fluent._active_run_stack.get()
    except AttributeError as e:
        raise RuntimeError(
            f"MLflow {mlflow.__version__} changed the fluent run internals that "
            f"roadseg.tracking.forget_active_run uses ({e})"
        ) from e
    if run_id in monitors:
        monitors.pop(run_id).finish()
    stack.clear()


LOCKED = ("database is locked", "database table is locked")
# Two parallel variants logging the same dataset input: both find it missing, both insert it, and
# the second insert breaks the store's unique key. Tried again, the call finds the first one's
# row and links it (SQLite's message; PostgreSQL's names the key of the datasets table).
DATASET_RACE = (
    "UNIQUE constraint failed: datasets.",
    "duplicate key value violates unique constraint",
)


def transient(error: BaseException) -> bool:
    """A store refusal that passes by itself (a lock, a concurrent insert of the same dataset),
    not an unreachable server to fall back from."""
    text = str(error)
    if any(m in text for m in LOCKED) or DATASET_RACE[0] in text:
        return True
    return DATASET_RACE[1] in text and "dataset" in text


def retry_locked(fn: Callable[[], Any], tries: int = 6, first_wait_s: float = 0.5) -> Any:
    """`fn()`, tried again (0.5, 1, 2, ... s apart) while the store refuses it for a `transient`
    reason.

    Parallel variants log to one SQLite file in a local run; SQLite refuses a writer at once
    (busy timeout or not) when two transactions would deadlock on upgrading their locks, and
    two variants that log the same dataset at once race on its unique key. Neither is an
    unreachable server to fall back from.
    """
    for attempt in range(tries):
        try:
            return fn()
        except Exception as e:
            if attempt == tries - 1 or not transient(e):
                raise
            time.sleep(first_wait_s * 2**attempt)
    raise AssertionError("unreachable")


class TrackedRun:
    """One MLflow run (the fluent active run, so `mlflow.pytorch.log_model` logs into it).

    Args:
        tracking_uri: where to log.
        experiment: experiment name (created when missing).
        fallback_dir: where the local SQLite store goes if the tracking server is unreachable.
        run_id: an existing run to continue (resumed training keeps its run).
        echo: where to say that logging fell back (default: a warning).
    """

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        *,
        fallback_dir: Path,
        run_id: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        system_metrics: bool = True,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.fallback_dir = Path(fallback_dir)
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.system_metrics = system_metrics
        self.echo = echo or (lambda msg: warnings.warn(msg, stacklevel=3))
        self.fell_back = False
        self.run_id: str | None = None
        self._resume_id = run_id
        self._params: dict[str, Any] = {}
        self._metrics: list[tuple[dict[str, float], int | None]] = []
        self._inputs: list[Any] = []

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> str:
        configure_http()
        try:
            retry_locked(self._start_remote)
        except Exception as e:
            self._fall_back(e)
        return self.run_id  # type: ignore[return-value]

    def _start_remote(self) -> None:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        exp = mlflow.set_experiment(
            experiment_id=ensure_experiment(mlflow.MlflowClient(), self.experiment)
        )
        resume = self._resume_id
        if resume is not None:
            try:
                mlflow.MlflowClient().get_run(resume)
            except Exception:
                resume = None  # e.g. the last attempt fell back to a local store
        run = mlflow.start_run(
            run_id=resume,
            experiment_id=None if resume else exp.experiment_id,
            run_name=None if resume else self.run_name,
            tags=None if resume else self.tags,
            log_system_metrics=self.system_metrics,
        )
        self.run_id = run.info.run_id

    def end(self, status: str = "FINISHED") -> None:
        import mlflow

        try:
            mlflow.end_run(status=status)
        except Exception as e:
            self.echo(f"MLflow: could not close run {self.run_id} ({e}); its logs are kept")

    def __enter__(self) -> TrackedRun:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.end("FAILED" if exc_type else "FINISHED")

    # -- logging -----------------------------------------------------------------------------
    def log_params(self, params: dict[str, Any]) -> None:
        import mlflow

        # MLflow params are strings of at most 6000 chars; lists are logged as their repr.
        clean = {k: str(v)[:6000] for k, v in params.items()}
        self.call(lambda: mlflow.log_params(clean))
        # Buffered only after the call: a call that triggers the fallback is retried there, so
        # buffering it first would replay it twice.
        self._params |= clean

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import mlflow

        # "/" is kept: MLflow groups charts by the part of the name before it (val_iou/road).
        clean = {k.replace(" ", "_"): float(v) for k, v in metrics.items()}
        self.call(lambda: mlflow.log_metrics(clean, step=step))
        self._metrics.append((clean, step))  # after the call, as for params

    def log_inputs(self, inputs: list[Any]) -> None:
        """Dataset inputs (`dataset_input`) of this run."""
        import mlflow

        self.call(lambda: mlflow.MlflowClient().log_inputs(self.run_id, inputs))
        self._inputs += inputs

    def set_tags(self, tags: dict[str, str]) -> None:
        import mlflow

        self.tags |= tags
        self.call(lambda: mlflow.set_tags(tags))

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run one logging call (MLflow retries its own HTTP requests; a locked SQLite store is
        waited for, see `retry_locked`); on failure fall back once and make the call again there.

        Returns the call's result, or None when even the local store failed (logged, ignored).
        """
        try:
            return retry_locked(fn)
        except Exception as e:
            if self.fell_back:
                self.echo(f"MLflow: logging failed on the local fallback store too ({e}); skipped")
                return None
            self._fall_back(e)
            try:
                return fn()
            except Exception as e2:
                self.echo(f"MLflow: logging failed on the local fallback store ({e2}); skipped")
                return None

    # -- internals ---------------------------------------------------------------------------
    def _fall_back(self, error: Exception) -> None:
        import mlflow

        original, original_id = self.tracking_uri, self.run_id
        forget_active_run(original_id)
        self.fallback_dir.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = f"sqlite:///{(self.fallback_dir / 'mlruns.db').resolve()}"
        self.fell_back = True
        self.echo(
            f"MLflow tracking server {original} is unreachable ({type(error).__name__}: "
            f"{str(error)[:200]}); training carries on, logging to the local store "
            f"{self.tracking_uri} instead"
        )
        self.tags |= {
            "roadseg.fallback_from": original,
            "roadseg.original_run_id": str(original_id),
        }
        self._resume_id = None
        self.system_metrics = False
        self._start_remote()
        # Replay what the lost run had, so the fallback run is complete on its own.
        if self._params:
            mlflow.log_params(self._params)
        for metrics, step in self._metrics:
            mlflow.log_metrics(metrics, step=step)
        if self._inputs:
            mlflow.MlflowClient().log_inputs(self.run_id, self._inputs)
