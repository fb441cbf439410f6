"""`roadseg promote`: move alias `champion` to a registered version, only through the gates."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import (
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


@app.command("promote")
def promote(
    model_uri: Annotated[
        str, typer.Argument(help="the version: models:/name@challenger or models:/name/N")
    ],
    by: Annotated[
        str | None,
        typer.Option("--by", help="who promotes (default $ROADSEG_PROMOTED_BY, user@host)"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check the gates, move nothing")
    ] = False,
    json_out: Annotated[Path | None, json_opt("the decision")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Make a version the champion when it passes the gates (register.*: min_miou,
    class_iou_floor, shadow_min_images, shadow_min_agreement); exit 1 with one line per failed
    gate, 2 when the URI names no version. Who and when are tagged on the version."""
    from roadseg.release.promote import PromotionError
    from roadseg.release.promote import promote as promote_version

    p = get_params(params, set_)
    try:
        result = promote_version(model_uri, p.register_, tracking_uri=tracking_uri(), by=by,
                                 dry_run=dry_run)  # fmt: skip
    except PromotionError as e:
        fail(str(e), 2)
    write_json(json_out, result.to_dict())
    for line in result.passed:
        echo(f"gate passed: {line}")
    for line in result.failed:
        echo(f"gate failed: {line}")
    typer.echo(result.summary())
    if result.failed:
        raise typer.Exit(1)
