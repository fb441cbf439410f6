"""The single entry point: `roadseg <command>`. DVC stages, KFP components and the Makefile call it.

Every command takes `--params FILE` and repeated `--set dotted.key=value` overrides.
Commands stay a few lines: load params, call one library function, report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from roadseg.config import Params, ParamsError, load_params

app = typer.Typer(help="Road-scene segmentation: data, training, pipelines, serving, drift.", no_args_is_help=True)
data_app = typer.Typer(help="Dataset commands: import, synth, validate, remap.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)

ParamsOpt = Annotated[Path | None, typer.Option("--params", help="params YAML (default: the repository's params.yaml)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override: dotted.key=value (repeatable)")]
SplitOpt = Annotated[list[str] | None, typer.Option("--split", help="split to work on (repeatable; default: all present)")]


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
        Path | None, typer.Option("--report-dir", help="Data Docs + JSON summary (default: validate.report_dir)")
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
    out = Console(width=None if console.is_terminal else 200)  # whole file names in logs, not folded
    if result.failures:
        out.print(failure_table(result))
    n_bad = len(result.failures)
    verdict = "[green]passed[/green]" if result.success else f"[red]{n_bad} violation(s)[/red]"
    out.print(f"validated {result.n_files} file pair(s) in {result.seconds:.1f}s: {verdict}")
    out.print(f"Data Docs: {result.data_docs_path}\nsummary:   {result.summary_path}")
    if not result.success:
        raise typer.Exit(1)


# --- training and evaluation ---------------------------------------------------------------


# --- pipeline --------------------------------------------------------------------------------


# --- serving and drift -----------------------------------------------------------------------


if __name__ == "__main__":
    app()
