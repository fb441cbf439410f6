"""Release steps of the pipeline: package the new champion into a Bento, roll it out.

What the `package` and `deploy` components run (`components/package.py`, `components/deploy.py`);
each skips, saying why, when there is nothing to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from roadseg.config import Params


def package_step(
    registration: Mapping[str, Any],
    params: Params,
    *,
    tracking_uri: str,
    export_dir: str | Path,
    int8_data: str | Path | None = None,
) -> dict[str, Any]:
    """Package the new champion into a self-contained Bento (`roadseg.release.packaging`); with
    `int8_data` (a dataset directory: the pipeline's remapped dataset when `package.int8` is on,
    `roadseg follow --int8`'s) the int8 variant is tried too, and `int8` in the result says
    whether it shipped and why.

    Skips, saying why, when the champion did not move: the Bento in service stays right.
    """
    if not registration.get("promoted"):
        reason = registration.get("reason") or "not promoted"
        return {"packaged": False, "reason": f"champion did not move: {reason}"}
    from roadseg.release.packaging import package_model

    uri = f"models:/{registration['model_name']}/{registration['version']}"
    result = package_model(
        uri,
        tracking_uri=tracking_uri,
        export_dir=export_dir,
        log_archive=params.package.log_archive,
        int8_data=int8_data,
        params=params,
    )
    return {
        "packaged": True,
        "model_uri": uri,
        **result.to_dict(),
        "serve_command": f"bentoml serve {result.bento_tag}",
    }


def deploy_step(
    packaged: Mapping[str, Any], params: Params, *, tracking_uri: str
) -> dict[str, Any]:
    """Roll the packaged Bento out to the cluster (`roadseg.release.deploy.deploy_release`).

    Skips, saying why, when nothing was packaged, `deploy.enabled` is off, or this does not run
    in a Kubernetes pod (a local run)."""
    if not packaged.get("packaged"):
        return {"deployed": False, "reason": f"nothing to deploy ({packaged.get('reason')})"}
    if not params.deploy.enabled:
        return {"deployed": False, "reason": "deploy.enabled is false"}
    from roadseg.release.deploy import KubeApi, KubeError, Target, deploy_release

    try:
        api = KubeApi.in_cluster()
    except KubeError as e:
        return {"deployed": False, "reason": f"skipped outside a cluster: {e}"}
    import httpx
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, version = packaged["mlflow_name"], packaged["mlflow_version"]
    archive = client.get_model_version(name, version).tags.get("bento_archive", "")
    d = params.deploy
    target = Target(d.namespace, d.deployment, d.container, d.service_url)
    with httpx.Client(timeout=30.0) as http:
        outcome = deploy_release(
            api,
            http,
            target=target,
            bento_tag=packaged["bento_tag"],
            archive=archive,
            image_repository=d.image_repository,
            build_namespace=d.namespace,
            build_template=d.build_job_template,
            build_timeout_s=d.build_timeout_s,
            rollout_timeout_s=d.rollout_timeout_s,
            set_tag=lambda k, v: client.set_model_version_tag(name, version, k, v),
        )
    return {"deployed": outcome.ok, **outcome.to_dict()}
