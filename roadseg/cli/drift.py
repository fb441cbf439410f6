"""`roadseg drift`: served traffic against the model's reference profile."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from roadseg.cli.common import (
    ParamsOpt,
    SetOpt,
    app,
    console,
    echo,
    fail,
    get_params,
    tracking_uri,
)


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
    on_drift: Annotated[
        str | None, typer.Option(help="alert | retrain (default: drift.on_drift)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="the labelled dataset now (retrain: pipeline run --local)")
    ] = None,
    data_version: Annotated[
        str | None, typer.Option(envvar="ROADSEG_DATA_VERSION", help="its version, if known")
    ] = None,
    data_rev: Annotated[
        str | None, typer.Option(envvar="ROADSEG_DATA_REV", help="DVC revision (cluster run)")
    ] = None,
    data_repo: Annotated[str, typer.Option(envvar="ROADSEG_DATA_REPO", help="DVC git URL")] = "",
    kfp_host: Annotated[
        str | None, typer.Option(help="retrain on Kubeflow (default: pipeline.host)")
    ] = None,
    params: ParamsOpt = None,
    set_: SetOpt = None,
) -> None:
    """Evidently drift report of served traffic vs the reference; exit 1 on drift.

    Against a registered version (models:/...) the report is logged to its run under
    drift/<timestamp>/; with --on-drift retrain a drift starts the training pipeline once per
    episode, only when the dataset changed since the champion's (roadseg/monitor/retrain.py)."""
    from roadseg.monitor.drift import check_drift, publish_gauges

    p = get_params(params, set_)
    mode = on_drift or p.drift.on_drift
    if mode not in ("alert", "retrain"):
        fail(f"--on-drift {mode!r}: expected alert or retrain", 2)
    if mode == "retrain" and not reference.startswith("models:/"):
        fail("--on-drift retrain needs --reference models:/name@alias (the served version)", 2)
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
    if reference.startswith("models:/"):
        _follow(reference, out, result.drifted, mode, p, params, set_, data_dir=data_dir,
                data_version=data_version, data_rev=data_rev, data_repo=data_repo,
                kfp_host=kfp_host)  # fmt: skip
    if result.drifted:
        fail(f"data drift: {len(drifted)}/{len(result.features)} features drifted", 1)


def _follow(reference, out, drifted, mode, p, params, set_, *, data_dir, data_version,
            data_rev, data_repo, kfp_host) -> None:  # fmt: skip
    """Log the report to the served version and act on drift (roadseg.monitor.retrain)."""
    from roadseg.monitor.retrain import follow_drift, local_dataset_versions

    def current() -> tuple[str, ...]:
        if data_version:
            return (data_version,)
        return local_dataset_versions(data_dir) if data_dir else ()

    host = kfp_host or p.pipeline.host
    start = _cluster_start(p, host, data_rev, data_repo, set_) if host else (
        _local_start(p, params, set_, data_dir))  # fmt: skip
    try:
        decision, logged = follow_drift(reference, out, drifted=drifted, tracking_uri=tracking_uri(),
                                        on_drift=mode, cooldown_hours=p.drift.cooldown_hours,
                                        current_dataset=current, start_run=start)  # fmt: skip
    except Exception as e:  # MLflow down, a dataset that cannot be hashed, a failed start
        fail(f"drift follow-up failed: {e}", 2)
    echo(f"report logged to {logged}")
    echo(decision.reason)


def _local_start(p, params, set_, data_dir):
    """`pipeline run --local` on `data_dir` (what `roadseg pipeline run --local` runs)."""
    if data_dir is None:
        return None

    def start() -> dict[str, str]:
        from roadseg.cli.pipeline import LOCAL_DEFAULTS
        from roadseg.pipeline.run import run_local
        from roadseg.tracking import git_commit

        overrides = [*LOCAL_DEFAULTS, *(set_ or [])]
        result = run_local(get_params(params, overrides), params_file=params, overrides=overrides,
                           loss_variants=list(p.pipeline.variants_for(p.data.dataset)),
                           tracking_uri=tracking_uri(), work_dir=Path("artifacts/pipeline"),
                           data_dir=data_dir, git_commit=git_commit() or "")  # fmt: skip
        return {"registered": f"{result['model_name']} v{result['version']}",
                "promoted": str(result["promoted"]), "parent_run": result.get("parent_run_id")}  # fmt: skip

    return start


def _cluster_start(p, host, data_rev, data_repo, set_):
    """One run of the compiled pipeline on Kubeflow (what `roadseg pipeline submit` sends)."""
    if not data_rev:
        return None

    def start() -> dict[str, str]:
        import kfp

        from roadseg.cli.pipeline import IR_FILE
        from roadseg.pipeline.run import submit_pipeline
        from roadseg.tracking import git_commit

        arguments = {"loss_variants": list(p.pipeline.variants_for(p.data.dataset)),
                     "model": p.model.name, "init_from": p.train.init_from or "",
                     "synthetic": False, "data_rev": data_rev, "data_repo": data_repo,
                     "overrides": list(set_ or []), "git_commit": git_commit() or ""}  # fmt: skip
        done = submit_pipeline(kfp.Client(host=host), IR_FILE, experiment="roadseg",
                               arguments=arguments, run_name="roadseg-drift-retrain")  # fmt: skip
        return {"kfp_run": done["id"], "host": host}

    return start
