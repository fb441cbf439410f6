"""The single entry point: `roadseg <command>`. DVC stages, KFP components and the Makefile call it.

Every command takes `--params FILE` and repeated `--set dotted.key=value` overrides.
Commands stay a few lines: load params, call one library function, report.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from roadseg.config import Params, ParamsError, load_params

app = typer.Typer(
    help="Road-scene segmentation: data, training, pipelines, serving, drift.", no_args_is_help=True
)
data_app = typer.Typer(
    help="Dataset commands: import, synth, validate, remap.", no_args_is_help=True
)
app.add_typer(data_app, name="data")

console = Console(stderr=True)

ParamsOpt = Annotated[
    Path | None,
    typer.Option("--params", help="params YAML (default: the repository's params.yaml)"),
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override: dotted.key=value (repeatable)")
]
SplitOpt = Annotated[
    list[str] | None,
    typer.Option("--split", help="split to work on (repeatable; default: all present)"),
]


def get_params(params_file: Path | None, sets: list[str] | None) -> Params:
    """Load params or exit 2 with the reason (never a traceback)."""
    try:
        return load_params(params_file, sets or [])
    except ParamsError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved params (after overrides) and their digest."""
    import yaml

    p = get_params(params, set_)
    typer.echo(yaml.safe_dump(p.to_dict(), sort_keys=False))
    typer.echo(f"# digest: {p.digest()}")


# --- data commands -------------------------------------------------------------------------


@data_app.command("validate")
def data_validate(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="dataset root (BDD100k 10k layout)")],
    split: SplitOpt = None,
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir", help="Data Docs + JSON summary (default: validate.report_dir)"
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Check every image/mask pair with a Great Expectations suite; exit 1 naming each bad file."""
    from roadseg.data.validation import DatasetError, failure_table, validate_dataset

    p = get_params(params, set_)
    try:
        result = validate_dataset(
            data_dir,
            p.data,
            splits=split,
            report_dir=report_dir or Path(p.validate_.report_dir),
            max_ignore_fraction=p.validate_.max_ignore_fraction,
        )
    except DatasetError as e:
        fail(str(e), code=2)
    out = Console(
        width=None if console.is_terminal else 200
    )  # whole file names in logs, not folded
    if result.failures:
        out.print(failure_table(result))
    n_bad = len(result.failures)
    verdict = "[green]passed[/green]" if result.success else f"[red]{n_bad} violation(s)[/red]"
    out.print(f"validated {result.n_files} file pair(s) in {result.seconds:.1f}s: {verdict}")
    out.print(f"Data Docs: {result.data_docs_path}\nsummary:   {result.summary_path}")
    if not result.success:
        raise typer.Exit(1)


def _warn_missing(missing: list[str], where: Path) -> None:
    for s in missing:
        console.print(f"[yellow]warning:[/yellow] split {s!r} not found in {where}; skipped")


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path | None, typer.Option("--out", help="output root (default: synth.out_dir)")
    ] = None,
    train: Annotated[
        int | None, typer.Option("--train", help="train images (default: synth.train)")
    ] = None,
    val: Annotated[
        int | None, typer.Option("--val", help="val images (default: synth.val)")
    ] = None,
    test: Annotated[
        int | None, typer.Option("--test", help="test images (default: synth.test)")
    ] = None,
    height: Annotated[
        int | None, typer.Option("--height", help="image height (default: synth.height)")
    ] = None,
    width: Annotated[
        int | None, typer.Option("--width", help="image width (default: synth.width)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="random seed (default: synth.seed)")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option("--dataset", help="bdd100k | kitti_road (default: data.dataset)"),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic road-scene dataset in the BDD100k or KITTI Road layout (same seed, same
    bytes)."""
    from roadseg.data.kitti import synthesize_kitti
    from roadseg.data.synth import synthesize_dataset

    p = get_params(params, [*(set_ or []), *([f"data.dataset={dataset}"] if dataset else [])])
    s = p.synth
    if p.data.dataset == "kitti_road":
        try:
            made = synthesize_kitti(out or Path(s.out_dir), train=s.train if train is None else train,
                                    val=s.val if val is None else val, test=s.test if test is None else test,
                                    height=height or s.height, width=width or s.width,
                                    seed=s.seed if seed is None else seed)  # fmt: skip
        except (ValueError, OSError) as e:
            fail(str(e))
        console.print(f"synthetic KITTI Road dataset in {made['root']}: {made['splits']}")
        return
    try:
        summary = synthesize_dataset(
            out or Path(s.out_dir),
            train=s.train if train is None else train,
            val=s.val if val is None else val,
            test=s.test if test is None else test,
            height=height or s.height,
            width=width or s.width,
            seed=s.seed if seed is None else seed,
            palette=[c.color for c in p.data.source_classes],
        )
    except (ValueError, OSError) as e:
        fail(str(e))
    console.print(f"synthetic dataset in {summary['out']}: {summary['splits']}")


@data_app.command("import")
def data_import(
    out: Annotated[Path, typer.Option("--out", help="dataset root to unpack into")],
    images_zip: Annotated[
        Path | None, typer.Option("--images-zip", help="bdd100k_images_10k.zip")
    ] = None,
    labels_zip: Annotated[
        Path | None, typer.Option("--labels-zip", help="bdd100k_sem_seg_labels_trainval.zip")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Unpack the official BDD100k archives into the layout (unsafe entries reject the archive)."""
    from roadseg.data.archive import ArchiveError, import_archives

    get_params(params, set_)
    try:
        summary = import_archives(out, images_zip=images_zip, labels_zip=labels_zip)
    except (ArchiveError, OSError) as e:
        fail(str(e))
    console.print(f"imported {summary['files']} file(s) into {summary['out']}: {summary['splits']}")


@data_app.command("remap")
def data_remap(
    data_dir: Annotated[Path, typer.Option("--data-dir", help="dataset root (BDD100k 10k layout)")],
    out: Annotated[
        Path | None, typer.Option("--out", help="output root (default: data.remapped_dir)")
    ] = None,
    split: SplitOpt = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="worker processes (default: data.num_workers)")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Remap masks 19 → 14 classes with params' mapping; write class_stats.json for the losses."""
    from roadseg.data.remap import remap_dataset

    p = get_params(params, set_)
    try:
        summary = remap_dataset(
            data_dir,
            out or Path(p.data.remapped_dir),
            p.data,
            splits=split,
            link_images=p.remap.link_images,
            workers=p.data.num_workers if workers is None else workers,
        )
    except (ValueError, OSError) as e:
        fail(str(e))
    _warn_missing(summary["missing"], data_dir)
    console.print(
        f"remapped {summary['splits']} into {summary['out']}; class stats: {summary['stats']}"
    )


@app.command("demo")
def demo(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The main job until the pipeline exists: synth → validate → remap, then a summary."""
    from rich.table import Table

    from roadseg.data.remap import remap_dataset
    from roadseg.data.synth import synthesize_dataset
    from roadseg.data.validation import DatasetError, validate_dataset

    p = get_params(params, set_)
    s, src, out = p.synth, Path(p.synth.out_dir), Path(p.data.remapped_dir)
    console.print(f"[bold]1/3 synth[/bold] → {src}")
    made = synthesize_dataset(src, train=s.train, val=s.val, test=s.test, height=s.height, width=s.width,
                              seed=s.seed, palette=[c.color for c in p.data.source_classes])  # fmt: skip
    console.print(f"[bold]2/3 validate[/bold] → {p.validate_.report_dir}")
    try:
        checked = validate_dataset(src, p.data, report_dir=Path(p.validate_.report_dir),
                                   max_ignore_fraction=p.validate_.max_ignore_fraction)  # fmt: skip
    except DatasetError as e:
        fail(str(e))
    if not checked.success:
        fail(f"validation found {len(checked.failures)} violation(s); see {checked.data_docs_path}")
    console.print(f"[bold]3/3 remap[/bold] → {out}")
    try:
        remapped = remap_dataset(
            src, out, p.data, link_images=p.remap.link_images, workers=p.data.num_workers
        )
    except (ValueError, OSError) as e:
        fail(str(e))
    table = Table(title="roadseg demo: what was produced and where")
    table.add_column("step")
    table.add_column("output")
    table.add_column("where", overflow="fold")
    counts = ", ".join(f"{k} {v}" for k, v in made["splits"].items())
    table.add_row("synth", f"{counts} images ({s.height}x{s.width}, seed {s.seed})", str(src))
    table.add_row("validate", f"{checked.n_files} file pairs: passed", str(checked.data_docs_path))
    table.add_row("", "JSON summary", str(checked.summary_path))
    masks = ", ".join(f"{k} {v['masks']}" for k, v in remapped["splits"].items())
    table.add_row("remap", f"19 → {len(p.data.classes)} classes; masks {masks}", str(out))
    table.add_row("", "class stats (frequencies, weights)", remapped["stats"])
    Console().print(table)


# --- training and evaluation ---------------------------------------------------------------


def _tracking_uri() -> str:
    from roadseg.tracking import resolve_tracking_uri

    return resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI"))


def _echo(message: str) -> None:
    console.print(message, markup=False, highlight=False)


DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", help="raw BDD100k, `data remap` output, or KITTI road dir")
]


@app.command("train")
def train(
    data_dir: DataDirOpt,
    model: Annotated[
        str | None, typer.Option("--model", help="unet | baseline (model.name)")
    ] = None,
    loss: Annotated[
        str | None, typer.Option("--loss", help="wce | ohem | dice | dice_ce | iou (loss.name)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from train.checkpoint_dir/last.pt")
    ] = False,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name")] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="write the result (run id, model uri, best scores)"),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train a model (tracked in MLflow at $MLFLOW_TRACKING_URI, default sqlite:///mlruns.db)."""
    import dataclasses
    import json

    from roadseg.training import train_model

    extra = [f"model.name={model}"] * bool(model) + [f"loss.name={loss}"] * bool(loss)
    p = get_params(params, [*(set_ or []), *extra])
    try:
        result = train_model(
            p, data_dir, resume=resume, tracking_uri=_tracking_uri(), run_name=run_name, echo=_echo
        )
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    best = result.best_val.get("miou")
    _echo(f"run {result.run_id}: best val mIoU {best if best is None else round(best, 4)} at epoch "
          f"{result.best_epoch}; model {result.model_uri}; checkpoints in {result.checkpoint_dir}")  # fmt: skip
    if json_out:
        out = dataclasses.asdict(result) | {"checkpoint_dir": str(result.checkpoint_dir)}
        out["best_val"] = {k: v for k, v in result.best_val.items() if k != "confusion_matrix"}
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(out, indent=2))


@app.command("evaluate")
def evaluate(
    data_dir: DataDirOpt,
    model_uri: Annotated[
        str | None,
        typer.Option(
            "--model-uri",
            help="models:/name@alias, models:/name/N, models:/m-<id>, runs:/<id>/model or a .pt checkpoint",
        ),
    ] = None,
    pred_dir: Annotated[
        Path | None,
        typer.Option("--pred-dir", help="score ready-made masks P/<stem>.png (merged-class ids)"),
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="split to score (default: evaluate.split)")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the scores as JSON")
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="MLflow run to log the scores to (default: the model's run)"),
    ] = None,
    save_preds: Annotated[
        Path | None,
        typer.Option("--save-preds", help="with --model-uri: also write the predicted masks here"),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Score a model or a directory of prediction masks on a split (full resolution)."""
    import json

    from rich.console import Console as StdoutConsole

    from roadseg import evaluation

    p = get_params(params, set_)
    split = split or p.evaluate.split
    if (model_uri is None) == (pred_dir is None):
        fail("give exactly one of --model-uri and --pred-dir", 2)
    uri = _tracking_uri()
    try:
        if model_uri:
            import mlflow

            from roadseg.modelio import load_model

            mlflow.set_tracking_uri(uri)
            model, spec, info = load_model(model_uri)
            scores = evaluation.evaluate_model(model, spec, data_dir, p, split, pred_dir=save_preds)
            run_id = run_id or info.get("run_id")
        else:
            scores = evaluation.evaluate_predictions(pred_dir, data_dir, p, split)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    out = StdoutConsole()
    for table in evaluation.score_tables(scores):
        out.print(table)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(scores, indent=2))
    if run_id:
        try:
            evaluation.log_scores(scores, run_id, uri, prefix=f"eval_{split}",
                                  data_dir=data_dir, dataset=p.data.dataset)  # fmt: skip
            _echo(f"logged to MLflow run {run_id}")
        except Exception as e:
            _echo(f"warning: could not log to MLflow run {run_id}: {e}")


# --- pipeline --------------------------------------------------------------------------------

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile, run locally, submit.", no_args_is_help=True
)
app.add_typer(pipeline_app, name="pipeline")
# Local runs: two loop iterations share the cores, so no DataLoader worker processes.
LOCAL_DEFAULTS = ["data.num_workers=0"]
LossOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--loss",
        help="loss variant (repeatable; default: pipeline.loss_variants, or kitti_loss_variants for kitti_road)",
    ),
]


def _registration_table(result: dict) -> None:
    from rich.table import Table

    from roadseg.pipeline import SCORE_COLUMNS, comparison_rows

    table = Table(title=f"{result['model_name']}: loss variants, full-resolution validation scores")
    for col in ("Loss", *(label for label, _ in SCORE_COLUMNS), "Registry", "MLflow run"):
        table.add_column(col, justify="right" if col in dict(SCORE_COLUMNS) else "left")
    for row in comparison_rows(result):
        mark = "★ champion" if row["champion"] else ("registered" if row["registered"] else "")
        cells = [
            f"{row[label]:.4f}" if row[label] is not None else "-" for label, _ in SCORE_COLUMNS
        ]
        table.add_row(row["loss"], *cells, mark, row["run_id"])
    out = Console(width=max(140, console.width))  # whole run ids, also in logs
    out.print(table)
    champion = result["champion_version"]
    verdict = (
        "promoted to champion"
        if result["promoted"]
        else f"not promoted; champion stays v{champion}"
        if champion
        else "not promoted; no champion yet"
    )
    out.print(
        f"{result['model_name']} v{result['version']} ({result['loss']}): {verdict} — {result['reason']}"
    )


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option("--out", help="IR file to write")] = Path(
        "pipelines/training_pipeline.yaml"
    ),
) -> None:
    """Compile the training pipeline to its IR YAML (commit pipelines/training_pipeline.yaml)."""
    from roadseg.pipeline import compile_pipeline

    try:
        console.print(f"compiled pipeline: {compile_pipeline(out)}")
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
    tracking_uri: Annotated[
        str | None,
        typer.Option("--tracking-uri", help="MLflow (default: sqlite:///$PWD/mlruns.db)"),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the whole pipeline locally and print one row of scores per loss variant."""
    from roadseg.pipeline import PipelineFailed, ensure_experiment, run_local
    from roadseg.tracking import experiment_name, git_commit

    if not local:
        fail("only --local runs here; use `roadseg pipeline submit --host URL` for a cluster", 2)
    if data_dir is not None and not data_dir.is_dir():
        fail(f"dataset directory not found: {data_dir}", 2)
    overrides = [*LOCAL_DEFAULTS, *(set_ or [])]
    p = get_params(params, overrides)
    uri = tracking_uri or f"sqlite:///{Path('mlruns.db').resolve()}"
    if uri.startswith("sqlite:"):  # artifacts beside the store, at an absolute path
        ensure_experiment(
            uri, experiment_name(p.data.dataset, p.train.experiment), Path("mlartifacts").resolve()
        )
    losses = loss or list(p.pipeline.variants_for(p.data.dataset))
    console.print(
        f"pipeline: {', '.join(losses)} on {data_dir or 'synthetic data'}; task logs in {work_dir / 'pipeline.log'}"
    )
    try:
        result = run_local(params_file=params, overrides=overrides, loss_variants=losses, model=p.model.name,
                           tracking_uri=uri, work_dir=work_dir, data_dir=data_dir, git_commit=git_commit() or "")  # fmt: skip
    except (PipelineFailed, ValueError, FileNotFoundError) as e:
        fail(str(e))
    _registration_table(result)
    packaged = result.get("package") or {}
    if packaged.get("packaged"):
        console.print(f"Bento {packaged['bento_tag']} built; serve it: {packaged['serve_command']}")
    elif packaged:
        console.print(f"no Bento built: {packaged.get('reason')}")
    deployed = result.get("deploy") or {}
    if deployed and not deployed.get("deployed"):
        console.print(f"deploy skipped locally: {deployed.get('reason')}")
    from roadseg.runs import parent_link

    Console(width=max(140, console.width)).print(
        f"compare the runs: {parent_link(uri, result['parent_run_id'])}", soft_wrap=True
    )


runs_app = typer.Typer(help="Pipeline runs in MLflow: their loss variants side by side.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(runs_app, name="runs")


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
    from roadseg import runs
    from roadseg.tracking import experiment_name

    if pipeline_run and parent:
        fail("give at most one of --pipeline-run and --parent", 2)
    if experiment is None:  # params only name the experiment
        p = get_params(params, set_)
        experiment = experiment_name(p.data.dataset, p.train.experiment)
    uri = _tracking_uri()
    try:
        run = runs.find_parent(uri, experiment, parent_run_id=parent, pipeline_run_id=pipeline_run)
        result = runs.load_registration(uri, run.info.run_id)
    except (ValueError, OSError) as e:
        fail(str(e))
    tags = run.data.tags
    Console(width=max(140, console.width)).print(
        f"pipeline run {tags.get(runs.PIPELINE_RUN_TAG, '?')} (MLflow run {run.info.run_id}, "
        f"{run.info.run_name}): data {tags.get('dataset_version', '?')}, "
        f"params {tags.get('params_hash', '?')}",
        soft_wrap=True,
    )
    _registration_table(result)


@pipeline_app.command("submit")
def pipeline_submit(
    host: Annotated[str, typer.Option("--host", help="Kubeflow Pipelines endpoint URL")],
    experiment: Annotated[str, typer.Option("--experiment", help="KFP experiment")] = "roadseg",
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="cron (5 or 6 fields): a recurring run")
    ] = None,
    package: Annotated[Path, typer.Option("--package", help="compiled IR")] = Path(
        "pipelines/training_pipeline.yaml"
    ),
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

    from roadseg.pipeline import submit_pipeline
    from roadseg.tracking import git_commit

    p = get_params(params, set_)
    arguments = {"loss_variants": loss or list(p.pipeline.variants_for(p.data.dataset)), "model": p.model.name,
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
    json_out: Annotated[
        Path | None, typer.Option("--json", help="write the decision as JSON")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Register the best trained variant in MLflow; `champion` moves only through the gates."""
    import json

    from roadseg.steps import collect_candidates, register_step
    from roadseg.tracking import dataset_version, git_commit

    p = get_params(params, set_)
    try:
        tags = {"dataset_version": dataset_version(data_dir), "params_hash": p.digest(),
                "git_commit": git_commit() or "unknown", "pipeline_run_id": "local"}  # fmt: skip
        result = register_step(
            collect_candidates(train_dir, eval_dir),
            data_dir,
            p,
            tracking_uri=_tracking_uri(),
            tags=tags,
        )
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    _registration_table(result)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2))


# --- serving and drift -----------------------------------------------------------------------


@app.command("serve")
def serve(
    model_uri: Annotated[
        str | None, typer.Option(help="model to serve (default: $ROADSEG_MODEL_URI or champion)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port)")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the BentoML service locally (`bentoml serve bento.service:RoadSegService`)."""
    import subprocess
    import sys

    if set_:
        fail("--set is not passed to the service; put overrides in a params file (--params)", 2)
    p = get_params(params, set_)
    env = dict(os.environ, MLFLOW_TRACKING_URI=_tracking_uri())
    if model_uri:
        env["ROADSEG_MODEL_URI"] = model_uri
    if params:
        env["ROADSEG_PARAMS"] = str(params.resolve())
    port = port or p.serve.port
    service = "bento.service:RoadSegService"
    cmd = [sys.executable, "-m", "bentoml", "serve", service, "--port", str(port)]
    try:
        code = subprocess.call(cmd, cwd=Path(__file__).resolve().parent.parent, env=env)
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command("stream")
def stream(
    video: Annotated[Path, typer.Option(help="video file to stream (MP4/AVI/MOV)")],
    url: Annotated[str, typer.Option(help="the WebSocket")] = "ws://127.0.0.1:3000/stream",
    out: Annotated[Path | None, typer.Option(help="write the answers as an MP4 here")] = None,
    format: Annotated[str, typer.Option(help="mask, color or overlay")] = "overlay",
    realtime: Annotated[
        bool, typer.Option("--realtime/--fast", help="video frame rate, or next frame on answer")
    ] = True,
    api_key: Annotated[
        str | None, typer.Option(envvar="ROADSEG_API_KEY", help="the service's API key")
    ] = None,
    codec: Annotated[str, typer.Option(help="frame encoding sent: jpeg or png")] = "jpeg",
) -> None:
    """Stream a video to `GET /stream` live; print frames/s, p50/p95 latency and drops."""
    from roadseg.inputs import InputError
    from roadseg.stream_client import stream_video

    if format not in ("mask", "color", "overlay") or codec.lower() not in ("jpeg", "png"):
        fail("--format must be mask, color or overlay; --codec jpeg or png", 2)
    try:
        stats = stream_video(url, video, out=out, fmt=format, realtime=realtime,
                             api_key=api_key, codec=codec)  # fmt: skip
    except (InputError, ValueError, OSError) as e:
        fail(str(e), 2)
    except Exception as e:  # a close from the service: its code and reason say why
        fail(f"stream ended: {e}", 1)
    typer.echo(stats.summary())
    if out is not None:
        _echo(f"wrote {out}")


@app.command("package")
def package(
    model_uri: Annotated[
        str, typer.Option(help="registered version: models:/name@alias or models:/name/N")
    ] = "models:/roadseg-unet@champion",
    export: Annotated[Path | None, typer.Option(help="also write the .bento archive here")] = None,
    log_archive: Annotated[
        bool, typer.Option(help="with --export: store the archive in the version's MLflow run")
    ] = False,
) -> None:
    """Package one registered version into a self-contained Bento (roadseg/packaging.py)."""
    from roadseg.packaging import PackagingError, package_model

    try:
        r = package_model(model_uri, tracking_uri=_tracking_uri(), export_dir=export,
                          log_archive=log_archive)  # fmt: skip
    except PackagingError as e:
        fail(str(e), 2)
    _echo(f"{r.mlflow_name} v{r.mlflow_version} -> model {r.model_tag}, Bento {r.bento_tag}")
    if r.archive:
        _echo(f"archive: {r.archive}")
    typer.echo(r.bento_tag)
    _echo(f"serve it with: bentoml serve {r.bento_tag}")


@app.command("build-context")
def build_context(
    archive: Annotated[str, typer.Option(help=".bento file or its MLflow artifact URI")],
    out: Annotated[Path, typer.Option(help="folder for the Docker build context")],
) -> None:
    """Write the Docker build context of a Bento (what the in-cluster BuildKit Job builds)."""
    from roadseg.packaging import PackagingError, write_build_context

    try:
        dockerfile = write_build_context(archive, out, tracking_uri=_tracking_uri())
    except PackagingError as e:
        fail(str(e), 2)
    _echo(f"build context in {out} (Dockerfile: {dockerfile})")


@app.command("lineage")
def lineage(
    ref: Annotated[str, typer.Argument(help="models:/name@alias, models:/name/N or a Bento tag")],
) -> None:
    """KFP run → MLflow run → registry version → Bento → image → deployment, in one table."""
    from rich.console import Console as StdoutConsole
    from rich.table import Table

    from roadseg.lineage import lineage_rows

    try:
        rows = lineage_rows(ref, tracking_uri=_tracking_uri())
    except Exception as e:  # unknown version or Bento: MLflow and BentoML raise their own types
        fail(f"cannot trace {ref}: {e}", 2)
    table = Table("stage", "value", title=f"lineage of {ref}")
    for stage, value in rows:
        table.add_row(stage, value)
    StdoutConsole().print(table)


@app.command("drift")
def drift(
    reference: Annotated[str, typer.Option(help="profile (.csv/.parquet) or models:/name@alias")],
    current: Annotated[Path, typer.Option(help="monitoring log (.jsonl) or a folder of them")],
    out: Annotated[Path, typer.Option(help="folder for the HTML/JSON report and drift.prom")],
    prom_file: Annotated[
        Path | None, typer.Option(help="also write the gauges here (node-exporter textfile)")
    ] = None,
    pushgateway: Annotated[str | None, typer.Option(help="push the gauges to this URL")] = None,
    model_version: Annotated[str | None, typer.Option(help="version label for the gauges")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evidently drift report of served traffic vs the reference; exit 1 on drift."""
    from roadseg.drift import check_drift, drift_registry, prometheus_text, write_prom_file

    p = get_params(params, set_)
    try:
        result, version = check_drift(
            reference,
            current,
            out,
            p.drift,
            tracking_uri=_tracking_uri(),
            model_version=model_version,
        )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), 2)
    except Exception as e:  # MLflow lookups: unknown model or alias, missing artifact
        fail(f"cannot run the drift report: {e}", 2)
    text = prometheus_text(result, version)
    if prom_file:
        write_prom_file(text, prom_file)
    if pushgateway:
        from prometheus_client import push_to_gateway

        try:
            push_to_gateway(
                pushgateway, job="roadseg-drift", registry=drift_registry(result, version)
            )
        except OSError as e:
            fail(f"cannot push to {pushgateway}: {e}", 2)
    if not prom_file and not pushgateway:
        typer.echo(text)
    drifted = [k for k, f in result.features.items() if f.drifted]
    console.print(
        f"drift share {result.drift_share:.2f} (threshold {result.threshold:.2f}); "
        f"drifted: {', '.join(drifted) or 'none'}; report: {result.html_path}"
    )
    if result.drifted:
        fail(f"data drift: {len(drifted)}/{len(result.features)} features drifted", 1)


if __name__ == "__main__":
    app()
