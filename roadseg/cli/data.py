"""Dataset commands (`roadseg data import|synth|validate|remap`), `roadseg demo` and `roadseg params`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from roadseg.cli.common import (
    ParamsOpt,
    RawDataDirOpt,
    SetOpt,
    SplitOpt,
    app,
    console,
    fail,
    get_params,
)

if TYPE_CHECKING:
    from rich.table import Table

    from roadseg.data.validation import ValidationResult

data_app = typer.Typer(
    help="Dataset commands: import, synth, validate, remap.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@app.command("params")
def show_params(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """Print the resolved params (after overrides) and their digest."""
    import yaml

    p = get_params(params, set_)
    typer.echo(yaml.safe_dump(p.to_dict(), sort_keys=False))
    typer.echo(f"# digest: {p.digest()}")


@data_app.command("validate")
def data_validate(
    data_dir: RawDataDirOpt,
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
    from roadseg.data.validation import DatasetError, validate_dataset

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
    # Whole file names in logs, not folded.
    out = Console(width=None if console.is_terminal else 200)
    if result.failures:
        out.print(_failure_table(result))
    n_bad = len(result.failures)
    verdict = "[green]passed[/green]" if result.success else f"[red]{n_bad} violation(s)[/red]"
    out.print(f"validated {result.n_files} file pair(s) in {result.seconds:.1f}s: {verdict}")
    out.print(f"Data Docs: {result.data_docs_path}\nsummary:   {result.summary_path}")
    if not result.success:
        raise typer.Exit(1)


def _failure_table(result: ValidationResult) -> Table:
    """A rich table with one line per offending file and the rule it broke."""
    from rich.table import Table

    table = Table(
        title=f"{len(result.failures)} label validation violation(s)", title_justify="left"
    )
    for name in ("split", "file", "rule", "detail"):
        table.add_column(name, overflow="fold")
    for f in result.failures:
        table.add_row(f.split, f.file, f.rule, f.detail)
    return table


def _count(name: str, what: str) -> object:
    return typer.Option(f"--{name}", help=f"{what} (default: synth.{name})")


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path | None, typer.Option("--out", help="output root (default: synth.out_dir)")
    ] = None,
    train: Annotated[int | None, _count("train", "train images")] = None,
    val: Annotated[int | None, _count("val", "val images")] = None,
    test: Annotated[int | None, _count("test", "test images")] = None,
    height: Annotated[int | None, _count("height", "image height")] = None,
    width: Annotated[int | None, _count("width", "image width")] = None,
    seed: Annotated[int | None, _count("seed", "random seed")] = None,
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
    sizes = {"train": s.train if train is None else train, "val": s.val if val is None else val,
             "test": s.test if test is None else test, "height": height or s.height,
             "width": width or s.width, "seed": s.seed if seed is None else seed}  # fmt: skip
    try:
        if p.data.dataset == "kitti_road":
            made = synthesize_kitti(out or Path(s.out_dir), **sizes)
            console.print(f"synthetic KITTI Road dataset in {made['root']}: {made['splits']}")
        else:
            palette = [c.color for c in p.data.source_classes]
            made = synthesize_dataset(out or Path(s.out_dir), **sizes, palette=palette)
            console.print(f"synthetic dataset in {made['out']}: {made['splits']}")
    except (ValueError, OSError) as e:
        fail(str(e))


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
    data_dir: RawDataDirOpt,
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
    for s in summary["missing"]:
        console.print(f"[yellow]warning:[/yellow] split {s!r} not found in {data_dir}; skipped")
    console.print(
        f"remapped {summary['splits']} into {summary['out']}; class stats: {summary['stats']}"
    )


@app.command("demo")
def demo(params: ParamsOpt = None, set_: SetOpt = None) -> None:
    """The data steps on the defaults (synth → validate → remap), then what was produced and where.

    `make demo-data` runs it; `make demo` (`roadseg pipeline run --local`) runs the whole pipeline.
    """
    from rich.table import Table

    from roadseg.data.validation import DatasetError
    from roadseg.pipeline.steps import ValidationFailed, data_steps

    p = get_params(params, set_)
    try:
        done = data_steps(p, echo=lambda line: console.print(line, markup=False))
    except (ValidationFailed, DatasetError, ValueError, OSError) as e:
        fail(str(e))
    made, checked, remapped = done["synth"], done["validation"], done["remap"]
    s = p.synth
    table = Table(title="roadseg demo: what was produced and where")
    table.add_column("step")
    table.add_column("output")
    table.add_column("where", overflow="fold")
    counts = ", ".join(f"{k} {v}" for k, v in made["splits"].items())
    table.add_row("synth", f"{counts} images ({s.height}x{s.width}, seed {s.seed})", s.out_dir)
    table.add_row("validate", f"{checked.n_files} file pairs: passed", str(checked.data_docs_path))
    table.add_row("", "JSON summary", str(checked.summary_path))
    masks = ", ".join(f"{k} {v['masks']}" for k, v in remapped["splits"].items())
    table.add_row(
        "remap", f"19 → {len(p.data.classes)} classes; masks {masks}", str(remapped["out"])
    )
    table.add_row("", "class stats (frequencies, weights)", remapped["stats"])
    Console().print(table)
