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


# --- training and evaluation ---------------------------------------------------------------


# --- pipeline --------------------------------------------------------------------------------


# --- serving and drift -----------------------------------------------------------------------


if __name__ == "__main__":
    app()
