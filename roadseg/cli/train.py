"""Training and evaluation: `roadseg train`, `roadseg evaluate`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import (
    DataDirOpt,
    ParamsOpt,
    SetOpt,
    app,
    echo,
    fail,
    get_params,
    json_opt,
    tracking_uri,
    write_json,
)
from roadseg.config import LOSS_NAMES, MODEL_NAMES


@app.command("train")
def train(
    data_dir: DataDirOpt,
    model: Annotated[
        str | None, typer.Option("--model", help=f"{' | '.join(MODEL_NAMES)} (model.name)")
    ] = None,
    loss: Annotated[
        str | None, typer.Option("--loss", help=f"{' | '.join(LOSS_NAMES)} (loss.name)")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from train.checkpoint_dir/last.pt")
    ] = False,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name")] = None,
    json_out: Annotated[
        Path | None, json_opt("the result (run id, model uri, best scores)")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Train a model (tracked in MLflow at $MLFLOW_TRACKING_URI, default sqlite:///mlruns.db)."""
    from roadseg.train.loop import train_model

    extra = [f"model.name={model}"] * bool(model) + [f"loss.name={loss}"] * bool(loss)
    p = get_params(params, [*(set_ or []), *extra])
    try:
        result = train_model(
            p, data_dir, resume=resume, tracking_uri=tracking_uri(), run_name=run_name, echo=echo
        )
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    best = result.best_val.get("miou")
    echo(f"run {result.run_id}: best val mIoU {best if best is None else round(best, 4)} at epoch "
         f"{result.best_epoch}; model {result.model_uri}; checkpoints in {result.checkpoint_dir}")  # fmt: skip
    write_json(json_out, result.to_dict())


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
    json_out: Annotated[Path | None, json_opt("the scores")] = None,
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
    from rich.console import Console as StdoutConsole

    from roadseg.evaluate.segmentation import evaluate_source, score_tables

    p = get_params(params, set_)
    if (model_uri is None) == (pred_dir is None):
        fail("give exactly one of --model-uri and --pred-dir", 2)
    try:
        scores, logged = evaluate_source(data_dir, p, split or p.evaluate.split,
                                         tracking_uri=tracking_uri(), model_uri=model_uri,
                                         pred_dir=pred_dir, save_preds=save_preds, run_id=run_id)  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    out = StdoutConsole()
    for table in score_tables(scores):
        out.print(table)
    write_json(json_out, scores)
    if logged:
        echo(logged)
