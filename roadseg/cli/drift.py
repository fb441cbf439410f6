"""`roadseg drift`: served traffic against the model's reference profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import ParamsOpt, SetOpt, app, console, fail, get_params, tracking_uri


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
    from roadseg.monitor.drift import check_drift, publish_gauges

    p = get_params(params, set_)
    try:
        result, version = check_drift(reference, current, out, p.drift,
                                      tracking_uri=tracking_uri(), model_version=model_version)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        fail(str(e), 2)
    except Exception as e:  # MLflow lookups: unknown model or alias, missing artifact
        fail(f"cannot run the drift report: {e}", 2)
    try:
        text = publish_gauges(result, version, prom_file=prom_file, pushgateway=pushgateway)
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
