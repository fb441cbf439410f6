"""Component: build the Bento's image in the cluster and roll it out (skips locally)."""

from kfp import dsl

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def deploy(packaged: str, params_file: str, overrides: list) -> str:
    """The package step's result plus `deploy`: rollout with wait, check and rollback
    (`roadseg.release.deploy`), or why it skipped. JSON."""
    import json
    import os

    from roadseg.pipeline.steps import step_params
    from roadseg.release.rollout import deploy_step
    from roadseg.tracking import resolve_tracking_uri

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides)
    data = json.loads(packaged)
    result = deploy_step(data["package"], params,
                         tracking_uri=resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))  # fmt: skip
    print(result.get("reason") or f"deployed {result.get('image')}")
    return json.dumps({**data, "deploy": result})
