"""The training pipeline and its results: `roadseg pipeline compile|run|submit`,
`roadseg register` (the DVC route) and `roadseg runs compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import (
    LossOpt,
    ParamsOpt,
    SetOpt,
    TrackingUriOpt,
    app,
    console,
    fail,
    get_params,
    json_opt,
    registration_table,
    tracking_uri,
    wide_console,
    write_json,
)

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile, run locally, submit.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
runs_app = typer.Typer(help="Pipeline runs in MLflow: their loss variants side by side.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(runs_app, name="runs")

# Local runs: two loop iterations share the cores, so no DataLoader worker processes.
LOCAL_DEFAULTS = ["data.num_workers=0"]
IR_FILE = Path("pipelines/training_pipeline.yaml")


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option("--out", help="IR file to write")] = IR_FILE,
) -> None:
    """Compile the training pipeline to its IR YAML (commit pipelines/training_pipeline.yaml)."""
    from roadseg.pipeline.run import import_pipeline

    try:
        console.print(f"compiled pipeline: {import_pipeline().compile_pipeline(out)}")
    except (FileNotFoundError, OSError) as e:
        fail(str(e))


@pipeline_app.command("run")
def pipeline_run(
    local: Annotated[
        bool, typer.Option("--local", help="run every task on this machine (kfp.local)")
    ] = False,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="raw BDD100k-layout dataset (default: synthetic)"),
    ] = None,
    loss: LossOpt = None,
    work_dir: Annotated[
        Path, typer.Option("--work-dir", help="task outputs and pipeline.log")
    ] = Path("artifacts/pipeline"),
    tracking_uri_: TrackingUriOpt = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the whole pipeline locally and print one row of scores per loss variant."""
    from roadseg.pipeline.run import PipelineFailed, run_local
    from roadseg.release.runs import parent_link
    from roadseg.tracking import git_commit

    if not local:
        fail("only --local runs here; use `roadseg pipeline submit --host URL` for a cluster", 2)
    if data_dir is not None and not data_dir.is_dir():
        fail(f"dataset directory not found: {data_dir}", 2)
    overrides = [*LOCAL_DEFAULTS, *(set_ or [])]
    p = get_params(params, overrides)
    uri = tracking_uri(tracking_uri_)
    losses = loss or list(p.pipeline.variants_for(p.data.dataset))
    console.print(
        f"pipeline: {', '.join(losses)} on {data_dir or 'synthetic data'}; task logs in {work_dir / 'pipeline.log'}"
    )
    try:
        result = run_local(p, params_file=params, overrides=overrides, loss_variants=losses,
                           tracking_uri=uri, work_dir=work_dir, data_dir=data_dir,
                           git_commit=git_commit() or "")  # fmt: skip
    except (PipelineFailed, ValueError, FileNotFoundError) as e:
        fail(str(e))
    registration_table(result)
    packaged = result.get("package") or {}
    if packaged.get("packaged"):
        console.print(f"Bento {packaged['bento_tag']} built; serve it: {packaged['serve_command']}")
    elif packaged:
        console.print(f"no Bento built: {packaged.get('reason')}")
    deployed = result.get("deploy") or {}
    if deployed and not deployed.get("deployed"):
        console.print(f"deploy skipped locally: {deployed.get('reason')}")
    wide_console().print(
        f"compare the runs: {parent_link(uri, result['parent_run_id'])}", soft_wrap=True
    )


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[
        str | None,
        typer.Option("--host", help="Kubeflow Pipelines endpoint URL (default: pipeline.host)"),
    ] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="KFP experiment")] = "roadseg",
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="cron (5 or 6 fields): a recurring run")
    ] = None,
    package: Annotated[Path, typer.Option("--package", help="compiled IR")] = IR_FILE,
    data_rev: Annotated[
        str | None,
        typer.Option("--data-rev", help="DVC revision of the dataset (default: synthetic)"),
    ] = None,
    data_repo: Annotated[
        str, typer.Option("--data-repo", help="git URL of the DVC project (with --data-rev)")
    ] = "",
    loss: LossOpt = None,
    run_name: Annotated[
        str, typer.Option("--run-name", help="run / recurring-run name")
    ] = "roadseg-training",
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Submit the compiled pipeline to Kubeflow Pipelines (kfp.Client); --schedule makes it recurring."""
    import kfp

    from roadseg.pipeline.run import submit_pipeline
    from roadseg.tracking import git_commit

    p = get_params(params, set_)
    host = host or p.pipeline.host
    if not host:
        fail("no Kubeflow Pipelines endpoint: give --host URL or set pipeline.host", 2)
    arguments = {"loss_variants": loss or list(p.pipeline.variants_for(p.data.dataset)), "model": p.model.name,
                 "init_from": p.train.init_from or "",
                 "synthetic": not data_rev, "data_rev": data_rev or "", "data_repo": data_repo,
                 "overrides": list(set_ or []), "git_commit": git_commit() or ""}  # fmt: skip
    try:
        done = submit_pipeline(kfp.Client(host=host), package, experiment=experiment, arguments=arguments,
                               run_name=run_name, schedule=schedule)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    except Exception as e:  # connection refused, auth, API errors: one line, no traceback
        fail(f"could not submit to {host}: {e}")
    console.print(f"submitted {done['kind']} {done['id']} to {host} (experiment {experiment!r})")


@app.command("register")
def register(
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="the (remapped) training data, for the drift profile")
    ],
    train_dir: Annotated[
        Path,
        typer.Option("--train-dir", help="holds <loss>/train.json from `roadseg train --json`"),
    ] = Path("artifacts/train"),
    eval_dir: Annotated[
        Path | None,
        typer.Option("--eval-dir", help="holds <loss>.json from `roadseg evaluate --json`"),
    ] = None,
    json_out: Annotated[Path | None, json_opt("the decision")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register the best trained variant in MLflow; `champion` moves only through the gates."""
    from roadseg.pipeline.steps import register_trained

    p = get_params(params, set_)
    try:
        result = register_trained(train_dir, eval_dir, data_dir, p, tracking_uri=tracking_uri())
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    registration_table(result)
    write_json(json_out, result)


@runs_app.command("compare")
def runs_compare(
    pipeline_run: Annotated[
        str | None, typer.Option("--pipeline-run", help="pipeline (KFP) run id")
    ] = None,
    parent: Annotated[str | None, typer.Option("--parent", help="MLflow parent run id")] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="default: train.experiment or the dataset")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Print the comparison table of a pipeline run (default: the latest) from MLflow."""
    from roadseg.release import runs
    from roadseg.tracking import experiment_name

    if pipeline_run and parent:
        fail("give at most one of --pipeline-run and --parent", 2)
    if experiment is None:  # params only name the experiment
        p = get_params(params, set_)
        experiment = experiment_name(p.data.dataset, p.train.experiment)
    uri = tracking_uri()
    try:
        run = runs.find_parent(uri, experiment, parent_run_id=parent, pipeline_run_id=pipeline_run)
        result = runs.load_registration(uri, run.info.run_id)
    except (ValueError, OSError) as e:
        fail(str(e))
    tags = run.data.tags
    wide_console().print(
        f"pipeline run {tags.get(runs.PIPELINE_RUN_TAG, '?')} (MLflow run {run.info.run_id}, "
        f"{run.info.run_name}): data {tags.get('dataset_version', '?')}, "
        f"params {tags.get('params_hash', '?')}",
        soft_wrap=True,
    )
    registration_table(result)
