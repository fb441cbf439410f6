"""Running the training pipeline: compile it, run it on this machine (`kfp.local`), submit it.

    roadseg pipeline compile --out pipelines/training_pipeline.yaml
    roadseg pipeline run --local                      # synthetic data, MLflow in ./mlruns.db
    roadseg pipeline submit --host https://kfp.example.com --schedule "0 0 3 * * *"

The DAG itself lives in `pipelines/training_pipeline.py` (components in `components/`), next to
this package in the source tree; the local run executes exactly that DAG with the
SubprocessRunner, every task a subprocess of this Python.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from roadseg.config import Params

# Service account of the pipeline pods (k8s/base/pipeline/serviceaccount.yaml).
SERVICE_ACCOUNT = "roadseg-pipeline"


class PipelineFailed(RuntimeError):
    """A pipeline task failed; the message names it and where its log is."""


def import_pipeline() -> ModuleType:
    """`pipelines.training_pipeline`, installed with this package from the source tree (its
    `compile_pipeline` writes the IR)."""
    try:
        return importlib.import_module("pipelines.training_pipeline")
    except ModuleNotFoundError as e:
        if e.name not in ("pipelines", "pipelines.training_pipeline", "components"):
            raise
        raise FileNotFoundError(
            "pipelines/training_pipeline.py is not importable: the pipeline commands need a "
            "source checkout installed with `pip install -e .`"
        ) from None


@contextlib.contextmanager
def _env(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the task subprocesses, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ensure_experiment(tracking_uri: str, name: str, artifact_root: Path) -> None:
    """Create the experiment with an absolute artifact location (tasks run as subprocesses),
    as a model-training experiment (`roadseg.tracking.ensure_experiment`)."""
    from mlflow import MlflowClient

    from roadseg.tracking import ensure_experiment as ensure

    artifact_root.mkdir(parents=True, exist_ok=True)
    ensure(MlflowClient(tracking_uri), name, artifact_root.resolve().as_uri())


class _TaskLog(io.TextIOBase):
    """stdout of the local run: everything to the log file, the task status lines also to stderr."""

    KEEP = re.compile(r"Executing task|finished with status|epoch \d+/\d+:")

    def __init__(self, log: io.TextIOBase) -> None:
        self.log = log

    def write(self, text: str) -> int:
        self.log.write(text)
        for line in text.splitlines():
            if self.KEEP.search(line):
                sys.stderr.write(_plain(line).strip() + "\n")
        return len(text)

    def flush(self) -> None:
        self.log.flush()


_EXCEPTION = re.compile(r"^\s*(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception|Failed|Interrupt)\b:?.*$")


def failure_cause(log_text: str) -> str:
    """The last exception line a task printed (`ValueError: ...`), so a failed run says why
    where the log file is gone (CI keeps only the console)."""
    lines = [_plain(line).strip() for line in log_text.splitlines()]
    causes = [line for line in lines if _EXCEPTION.match(line)]
    return causes[-1][:500] if causes else ""


def run_local(
    params: Params,
    *,
    params_file: str | Path | None,
    overrides: Sequence[str],
    loss_variants: Sequence[str],
    tracking_uri: str,
    work_dir: str | Path,
    data_dir: str | Path | None = None,
    git_commit: str = "",
    threads_per_task: int = 1,
) -> dict[str, Any]:
    """Run the whole pipeline with `kfp.local` (SubprocessRunner, this venv); return the
    registration result (with every variant's scores in `candidates`).

    `params` are those of `params_file` with `overrides` (the tasks load the same). A new
    experiment in a SQLite store gets its artifacts beside the store (`mlartifacts/`), at an
    absolute path since the tasks run as subprocesses.

    Task output goes to `work_dir/pipeline.log`; task status and epoch lines also to stderr.
    Raises `PipelineFailed` naming the failed task.
    """
    from kfp import local

    from roadseg.tracking import experiment_name

    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if tracking_uri.startswith("sqlite:///"):  # artifacts beside the store: mlartifacts/
        store = Path(tracking_uri.removeprefix("sqlite:///"))
        name = experiment_name(params.data.dataset, params.train.experiment)
        ensure_experiment(tracking_uri, name, store.resolve().parent / "mlartifacts")
    log_path = work / "pipeline.log"
    module = import_pipeline()
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(work / "kfp"),
        raise_on_error=True,
    )
    env = {
        "MLFLOW_TRACKING_URI": tracking_uri,
        # kfp.local runs two loop iterations at once; one thread each keeps 2 cores busy
        # without oversubscription.
        "OMP_NUM_THREADS": str(threads_per_task),
        "MKL_NUM_THREADS": str(threads_per_task),
        "PYTHONWARNINGS": "ignore",
    }
    arguments = {
        "loss_variants": list(loss_variants),
        "model": params.model.name,
        "init_from": params.train.init_from or "",
        "synthetic": data_dir is None,
        "data_dir": str(Path(data_dir).resolve()) if data_dir else "",
        "params_file": str(Path(params_file).resolve()) if params_file else "",
        "overrides": list(overrides),
        "git_commit": git_commit,
    }
    with (
        _env(env),
        log_path.open("a") as log,
        contextlib.redirect_stdout(_TaskLog(log)),
        warnings.catch_warnings(),
    ):
        # Expected locally: the Kubernetes settings are ignored and the image is not pulled.
        warnings.filterwarnings("ignore", message=".*(no effect in the current local|base image)")
        try:
            task = module.training_pipeline(**arguments)
        except RuntimeError as e:
            log.flush()
            cause = failure_cause(log_path.read_text(errors="replace"))
            raise PipelineFailed(
                f"{_plain(str(e))}{f' Cause: {cause}' if cause else ''} Task logs: {log_path}"
            ) from None
    return json.loads(task.output)


def cron_6_fields(expression: str) -> str:
    """KFP cron has a seconds field first; accept the usual 5-field form too."""
    fields = expression.split()
    if len(fields) == 5:
        return "0 " + expression.strip()
    if len(fields) == 6:
        return expression.strip()
    raise ValueError(f"cron expression {expression!r} needs 5 or 6 fields, got {len(fields)}")


def submit_pipeline(
    client: Any,
    package_path: str | Path,
    *,
    experiment: str,
    arguments: Mapping[str, Any],
    run_name: str,
    schedule: str | None = None,
) -> dict[str, str]:
    """Submit the compiled pipeline with a `kfp.Client`: one run, or a recurring run on `schedule`."""
    package = Path(package_path)
    if not package.is_file():
        raise FileNotFoundError(
            f"compiled pipeline not found: {package} (roadseg pipeline compile)"
        )
    if schedule:
        exp = client.create_experiment(experiment)
        job = client.create_recurring_run(
            experiment_id=exp.experiment_id,
            job_name=run_name,
            cron_expression=cron_6_fields(schedule),
            params=dict(arguments),
            pipeline_package_path=str(package),
            max_concurrency=1,
            no_catchup=True,
            service_account=SERVICE_ACCOUNT,
        )
        return {"kind": "recurring run", "id": job.recurring_run_id}
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments=dict(arguments),
        run_name=run_name,
        experiment_name=experiment,
        service_account=SERVICE_ACCOUNT,
    )
    return {"kind": "run", "id": run.run_id}


def _plain(text: str) -> str:
    """Drop the ANSI colours kfp.local puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)
