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


def _warn_missing(missing: list[str], where: Path) -> None:
    for s in missing:
        console.print(f"[yellow]warning:[/yellow] split {s!r} not found in {where}; skipped")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path | None, typer.Option("--out", help="output root (default: synth.out_dir)")] = None,
    train: Annotated[int | None, typer.Option("--train", help="train images (default: synth.train)")] = None,
    val: Annotated[int | None, typer.Option("--val", help="val images (default: synth.val)")] = None,
    test: Annotated[int | None, typer.Option("--test", help="test images (default: synth.test)")] = None,
    height: Annotated[int | None, typer.Option("--height", help="image height (default: synth.height)")] = None,
    width: Annotated[int | None, typer.Option("--width", help="image width (default: synth.width)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="random seed (default: synth.seed)")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Write a synthetic road-scene dataset in the BDD100k layout (deterministic for a seed)."""
    from roadseg.data.synth import synthesize_dataset

    p = get_params(params, set_)
    s = p.synth
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
    images_zip: Annotated[Path | None, typer.Option("--images-zip", help="bdd100k_images_10k.zip")] = None,
    labels_zip: Annotated[Path | None, typer.Option("--labels-zip", help="bdd100k_sem_seg_labels_trainval.zip")] = None,
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
    out: Annotated[Path | None, typer.Option("--out", help="output root (default: data.remapped_dir)")] = None,
    split: SplitOpt = None,
    workers: Annotated[int | None, typer.Option("--workers", help="worker processes (default: data.num_workers)")] = None,
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
    console.print(f"remapped {summary['splits']} into {summary['out']}; class stats: {summary['stats']}")


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
        remapped = remap_dataset(src, out, p.data, link_images=p.remap.link_images, workers=p.data.num_workers)
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


# --- pipeline --------------------------------------------------------------------------------


# --- serving and drift -----------------------------------------------------------------------


if __name__ == "__main__":
    app()
