"""`roadseg follow`: releases follow the registry (roadseg/release/follow.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from roadseg.cli.common import ParamsOpt, SetOpt, app, echo, fail, get_params, tracking_uri

if TYPE_CHECKING:
    from roadseg.release.follow import Follower
    from roadseg.release.targets import Release


@app.command("follow")
def follow(
    poll: Annotated[
        float, typer.Option("--poll", help="reconcile every SECONDS (0: only on webhooks)")
    ] = 300.0,
    listen: Annotated[
        bool, typer.Option("--listen/--no-listen", help="receive MLflow webhooks (POST /webhook)")
    ] = False,
    host: Annotated[str, typer.Option(help="webhook receiver address")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="webhook receiver port")] = 8080,
    secret: Annotated[
        str | None,
        typer.Option(envvar="ROADSEG_WEBHOOK_SECRET", help="the webhook's HMAC secret"),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="max age of a delivery's signed timestamp, seconds")
    ] = 300.0,
    once: Annotated[bool, typer.Option("--once", help="reconcile once and exit")] = False,
    target: Annotated[
        str, typer.Option(help="cluster (package + deploy step) | local (bentoml serve here)")
    ] = "cluster",
    serve_port: Annotated[int, typer.Option(help="local target: the service's port")] = 3000,
    export_dir: Annotated[Path, typer.Option(help="where .bento archives go")] = Path("dist"),
    alias: Annotated[str, typer.Option(help="the alias followed")] = "champion",
    retry_after: Annotated[
        float, typer.Option(help="a failed version is retried by the timer after SECONDS")
    ] = 3600.0,
    int8: Annotated[
        Path | None,
        typer.Option(
            "--int8",
            help="dataset dir: each release also tries model.int8.onnx, calibrated on its train "
            "split, shipped if its val mIoU drops less than package.int8_max_miou_drop",
        ),
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Package and deploy models:/<model>@champion whenever the alias moves (no pipeline run).

    A reconciler compares the alias with what the service reports every --poll seconds; with
    --listen, MLflow's signed model_version_alias.created webhooks trigger it at once. Exit
    codes with --once: 0 served (or nothing to do), 1 the release failed, 2 bad input."""
    import logging

    from roadseg.release.follow import Follower

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = get_params(params, set_)
    _check_options(target=target, listen=listen, secret=secret, once=once, poll=poll)
    if int8 is not None and not int8.is_dir():
        fail(f"--int8 {int8}: not a directory", 2)
    uri = tracking_uri()
    name = p.register_.model_name_for(p.data.dataset)
    release = _release_target(p, target, uri=uri, params=params, serve_port=serve_port,
                              export_dir=export_dir, int8_data=int8)  # fmt: skip
    follower = Follower(name, release, tracking_uri=uri, alias=alias, retry_after_s=retry_after)
    if once:
        _follow_once(follower)
    banner = (f"following {name}@{alias} at {uri} ({target}; poll {poll:g} s"
              f"{f', webhooks on {host}:{port}/webhook' if listen else ''})")  # fmt: skip
    webhook = (host, port, secret or "", tolerance) if listen else None
    _run_until_stopped(follower, poll, banner=banner, webhook=webhook)


def _check_options(
    *, target: str, listen: bool, secret: str | None, once: bool, poll: float
) -> None:
    """Exit 2 on options that cannot work together, before anything starts."""
    if target not in ("cluster", "local"):
        fail(f"--target {target!r}: expected cluster or local", 2)
    if listen and not secret:
        fail("--listen needs --secret or $ROADSEG_WEBHOOK_SECRET (unsigned events are refused)", 2)
    if once and target == "local":
        fail("--once with --target local would stop the server it starts; use --poll", 2)
    if not listen and not once and poll <= 0:
        fail("nothing would trigger a release: give --poll SECONDS, --listen or --once", 2)


def _release_target(
    p: Any,
    target: str,
    *,
    uri: str,
    params: Path | None,
    serve_port: int,
    export_dir: Path,
    int8_data: Path | None = None,
) -> Release:
    """Where releases go: the cluster's package + deploy steps, or `bentoml serve` here."""
    from roadseg.release.targets import ClusterRelease, LocalRelease

    if target == "cluster":
        return ClusterRelease(p, tracking_uri=uri, export_dir=export_dir, int8_data=int8_data)
    env = {"ROADSEG_PARAMS": str(params.resolve())} if params else {}
    return LocalRelease(tracking_uri=uri, port=serve_port, env=env, export_dir=None,
                        int8_data=int8_data, params=p)  # fmt: skip


def _follow_once(follower: Follower) -> None:
    """--once: one forced sync; exit 0 served (or nothing to do), 1 failed, 2 not tried."""
    name, alias = follower.name, follower.alias
    try:
        result = follower.sync(force=True)
    except Exception as e:  # MLflow unreachable, unknown model
        fail(f"cannot follow {name}@{alias}: {e}", 2)
    echo(f"{name}@{alias}: {result.action}: {result.reason}")
    raise typer.Exit(1 if result.action == "failed" else 0)


def _run_until_stopped(
    follower: Follower,
    poll: float,
    *,
    banner: str,
    webhook: tuple[str, int, str, float] | None,
) -> None:
    """Run the worker (timer and requests) and, given `webhook` (host, port, secret, tolerance),
    the receiver, until SIGINT or SIGTERM; then stop the worker and a local server."""
    import signal

    from roadseg.release.targets import LocalRelease

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    if webhook is None:  # the worker threads inherit the mask; the main thread waits for a signal
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    follower.start(poll if poll > 0 else None)
    follower.request(force=False)  # reconcile once at start-up
    echo(banner)
    try:
        if webhook is not None:
            import uvicorn

            from roadseg.release.webhook import webhook_app

            host, port, secret, tolerance = webhook
            app_ = webhook_app(follower, secret, tolerance_s=tolerance)
            uvicorn.run(app_, host=host, port=port, log_level="info", access_log=False)
        else:
            signal.sigwait(stop_signals)
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop(timeout=30)
        if isinstance(follower.release, LocalRelease):
            follower.release.stop()
