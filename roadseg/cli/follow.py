"""`roadseg follow`: releases follow the registry (roadseg/release/follow.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import ParamsOpt, SetOpt, app, echo, fail, get_params, tracking_uri


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
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Package and deploy models:/<model>@champion whenever the alias moves (no pipeline run).

    A reconciler compares the alias with what the service reports every --poll seconds; with
    --listen, MLflow's signed model_version_alias.created webhooks trigger it at once. Exit
    codes with --once: 0 served (or nothing to do), 1 the release failed, 2 bad input."""
    import logging

    from roadseg.release.follow import ClusterRelease, Follower, LocalRelease

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = get_params(params, set_)
    if target not in ("cluster", "local"):
        fail(f"--target {target!r}: expected cluster or local", 2)
    if listen and not secret:
        fail("--listen needs --secret or $ROADSEG_WEBHOOK_SECRET (unsigned events are refused)", 2)
    if once and target == "local":
        fail("--once with --target local would stop the server it starts; use --poll", 2)
    if not listen and not once and poll <= 0:
        fail("nothing would trigger a release: give --poll SECONDS, --listen or --once", 2)
    uri = tracking_uri()
    name = p.register.model_name_for(p.data.dataset)
    if target == "cluster":
        release = ClusterRelease(p, tracking_uri=uri, export_dir=export_dir)
    else:
        env = {"ROADSEG_PARAMS": str(params.resolve())} if params else {}
        release = LocalRelease(tracking_uri=uri, port=serve_port, env=env, export_dir=None)
    follower = Follower(name, release, tracking_uri=uri, alias=alias, retry_after_s=retry_after)
    if once:
        try:
            result = follower.sync(force=True)
        except Exception as e:  # MLflow unreachable, unknown model
            fail(f"cannot follow {name}@{alias}: {e}", 2)
        echo(f"{name}@{alias}: {result.action}: {result.reason}")
        raise typer.Exit(1 if result.action == "failed" else 0)
    import signal

    stop_signals = {signal.SIGINT, signal.SIGTERM}
    if not listen:  # the worker threads inherit the mask; the main thread waits for a signal
        signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    follower.start(poll if poll > 0 else None)
    follower.request(force=False)  # reconcile once at start-up
    echo(f"following {name}@{alias} at {uri} ({target}; poll {poll:g} s"
         f"{f', webhooks on {host}:{port}/webhook' if listen else ''})")  # fmt: skip
    try:
        if listen:
            import uvicorn

            from roadseg.release.follow import webhook_app

            app_ = webhook_app(follower, secret or "", tolerance_s=tolerance)
            uvicorn.run(app_, host=host, port=port, log_level="info", access_log=False)
        else:
            signal.sigwait(stop_signals)
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop(timeout=30)
        if isinstance(release, LocalRelease):
            release.stop()
