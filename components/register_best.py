"""Component: register the best variant in the MLflow Model Registry (gated promotion)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def register_best(
    candidates: list,
    dataset: Input[Dataset],
    params_file: str,
    overrides: list,
    params_hash: str,
    dataset_digest: str,
    git_commit: str,
    pipeline_run_id: str,
) -> str:
    """Registers the best val mIoU; moves `champion` only through the gates. Returns the decision (JSON)."""
    import json
    import os

    from roadseg.pipeline.steps import register_step, step_params
    from roadseg.tracking import resolve_tracking_uri

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides,
                         params_hash=params_hash)  # fmt: skip
    tags = {"dataset_version": dataset_digest, "params_hash": params_hash,
            "git_commit": git_commit or "unknown", "pipeline_run_id": pipeline_run_id}  # fmt: skip
    result = register_step([json.loads(c) for c in candidates], dataset.path, params,
                         tracking_uri=resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")),
                         tags=tags)  # fmt: skip
    return json.dumps(result)
