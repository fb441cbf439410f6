"""What every command shares: the Typer app, the console, option types and the exit helpers.

Options used by several commands (`--params`, `--set`, `--split`, `--data-dir`, `--loss`,
`--json`) are defined here once, so their names and help never drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from roadseg.config import LOSS_NAMES, Params, ParamsError, load_params

app = typer.Typer(
    help="Road-scene segmentation: data, training, pipelines, serving, drift.", no_args_is_help=True
)
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
RawDataDirOpt = Annotated[
    Path, typer.Option("--data-dir", help="dataset root (BDD100k 10k layout)")
]
DataDirOpt = Annotated[
    Path, typer.Option("--data-dir", help="raw BDD100k, `data remap` output, or KITTI road dir")
]
LossOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--loss",
        help=f"loss variant: {' | '.join(LOSS_NAMES)} (repeatable; default: "
        "pipeline.loss_variants, or kitti_loss_variants for kitti_road)",
    ),
]
TrackingUriOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        help="MLflow (default: $MLFLOW_TRACKING_URI, else sqlite:///$PWD/mlruns.db)",
    ),
]


def json_opt(what: str) -> Any:
    """A `--json FILE` option: write `what` there."""
    return typer.Option("--json", help=f"write {what} as JSON")


def get_params(params_file: Path | None, sets: list[str] | None) -> Params:
    """Load params or exit 2 with the reason (never a traceback)."""
    try:
        return load_params(params_file, sets or [])
    except ParamsError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def fail(message: str, code: int = 1) -> None:
    """Print `error: message` and exit with `code`."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def echo(message: str) -> None:
    """A plain line on stderr (no markup: paths and URIs stay as they are)."""
    console.print(message, markup=False, highlight=False)


def tracking_uri(flag: str | None = None) -> str:
    """MLflow tracking URI: the flag, then `$MLFLOW_TRACKING_URI`, then `./mlruns.db`."""
    from roadseg.tracking import resolve_tracking_uri

    return resolve_tracking_uri(flag, os.environ.get("MLFLOW_TRACKING_URI"))


def write_json(path: Path | None, data: Any) -> None:
    """Write `data` as indented JSON to `path` (parents created); nothing when `path` is None."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def wide_console() -> Console:
    """stdout, at least 140 columns wide: whole run ids and URIs, also in logs."""
    return Console(width=max(140, console.width))


def registration_table(result: dict) -> None:
    """The loss variants' scores side by side, with the registry's decision."""
    from rich.table import Table

    from roadseg.release.runs import SCORE_COLUMNS, comparison_rows

    table = Table(title=f"{result['model_name']}: loss variants, full-resolution validation scores")
    for col in ("Loss", *(label for label, _ in SCORE_COLUMNS), "Registry", "MLflow run"):
        table.add_column(col, justify="right" if col in dict(SCORE_COLUMNS) else "left")
    for row in comparison_rows(result):
        mark = "★ champion" if row["champion"] else ("registered" if row["registered"] else "")
        cells = [
            f"{row[label]:.4f}" if row[label] is not None else "-" for label, _ in SCORE_COLUMNS
        ]
        table.add_row(row["loss"], *cells, mark, row["run_id"])
    out = wide_console()
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
