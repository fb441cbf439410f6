"""Serving and release: `roadseg serve`, `stream`, `package`, `build-context`, `lineage`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import ParamsOpt, SetOpt, app, echo, fail, get_params, tracking_uri

REPO = Path(__file__).resolve().parents[2]  # where `bento/service.py` lives


@app.command("serve")
def serve(
    model_uri: Annotated[
        str | None, typer.Option(help="model to serve (default: $ROADSEG_MODEL_URI or champion)")
    ] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port)")] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Run the BentoML service locally (`bentoml serve bento.service:RoadSegService`).

    This process becomes the server (exec): SIGTERM/SIGINT reach BentoML's process manager,
    which drains its workers (`serve.drain_seconds`) and leaves no process behind; a model that
    cannot be served ends it with exit code 1 and one line saying why."""
    import sys

    if set_:
        fail("--set is not passed to the service; put overrides in a params file (--params)", 2)
    p = get_params(params, set_)
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri())
    if model_uri:
        env["ROADSEG_MODEL_URI"] = model_uri
    if params:
        env["ROADSEG_PARAMS"] = str(params.resolve())
    port = port or p.serve.port
    service = "bento.service:RoadSegService"
    cmd = [sys.executable, "-m", "bentoml", "serve", service, "--port", str(port),
           "--timeout-graceful-shutdown", str(p.serve.drain_seconds)]  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.chdir(REPO)
    os.execve(sys.executable, cmd, env)


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
    from roadseg.serve.errors import InputError
    from roadseg.serve.stream_client import stream_video

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
        echo(f"wrote {out}")


@app.command("package")
def package(
    model_uri: Annotated[
        str, typer.Option(help="registered version: models:/name@alias or models:/name/N")
    ] = "models:/roadseg-unet@champion",
    export: Annotated[Path | None, typer.Option(help="also write the .bento archive here")] = None,
    log_archive: Annotated[
        bool, typer.Option(help="with --export: store the archive in the version's MLflow run")
    ] = False,
    int8: Annotated[
        Path | None,
        typer.Option(
            "--int8",
            help="dataset dir: also ship model.int8.onnx, calibrated on its train split, if its "
            "val mIoU drops less than package.int8_max_miou_drop",
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Package one registered version into a self-contained Bento (roadseg/release/packaging.py).

    With --int8 DATA_DIR, the int8 variant (serve.backend: onnxruntime_int8) is quantised and
    scored; rejected or failed, the float model still ships and the labels say why."""
    from roadseg.release.packaging import PackagingError, package_model

    p = get_params(params, set_)
    if int8 is not None and not int8.is_dir():
        fail(f"--int8 {int8}: not a directory", 2)
    try:
        r = package_model(model_uri, tracking_uri=tracking_uri(), export_dir=export,
                          log_archive=log_archive, int8_data=int8, params=p)  # fmt: skip
    except PackagingError as e:
        fail(str(e), 2)
    echo(f"{r.mlflow_name} v{r.mlflow_version} -> model {r.model_tag}, Bento {r.bento_tag}")
    if r.archive:
        echo(f"archive: {r.archive}")
    if r.int8:
        echo(f"int8 variant {r.int8}")
    typer.echo(r.bento_tag)
    echo(f"serve it with: bentoml serve {r.bento_tag}")


@app.command("build-context")
def build_context(
    archive: Annotated[str, typer.Option(help=".bento file or its MLflow artifact URI")],
    out: Annotated[Path, typer.Option(help="folder for the Docker build context")],
) -> None:
    """Write the Docker build context of a Bento (what the in-cluster BuildKit Job builds)."""
    from roadseg.release.packaging import PackagingError, write_build_context

    try:
        dockerfile = write_build_context(archive, out, tracking_uri=tracking_uri())
    except PackagingError as e:
        fail(str(e), 2)
    echo(f"build context in {out} (Dockerfile: {dockerfile})")


@app.command("lineage")
def lineage(
    ref: Annotated[str, typer.Argument(help="models:/name@alias, models:/name/N or a Bento tag")],
    card: Annotated[bool, typer.Option("--card", help="print the version's model card")] = False,
) -> None:
    """KFP run → MLflow run → registry version → Bento → image → deployment, in one table."""
    from rich.console import Console as StdoutConsole
    from rich.table import Table

    from roadseg.release.lineage import card_markdown, lineage_rows

    if card:
        try:
            typer.echo(card_markdown(ref, tracking_uri=tracking_uri()))
        except FileNotFoundError as e:  # registered before cards, or the card failed
            fail(str(e), 2)
        except Exception as e:  # unknown version or Bento
            fail(f"cannot trace {ref}: {e}", 2)
        return

    try:
        rows = lineage_rows(ref, tracking_uri=tracking_uri())
    except Exception as e:  # unknown version or Bento: MLflow and BentoML raise their own types
        fail(f"cannot trace {ref}: {e}", 2)
    table = Table("stage", "value", title=f"lineage of {ref}")
    for stage, value in rows:
        table.add_row(stage, value)
    StdoutConsole().print(table)
