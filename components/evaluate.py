"""Component: full-resolution evaluation of one trained variant, logged to its MLflow run."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    candidate: str,
    metrics: Output[Metrics],
    params_file: str,
    overrides: list,
) -> str:
    """Scores on `evaluate.split`; returns the candidate with them as `metrics` (JSON)."""
    import json
    import os

    from roadseg.pipeline.steps import evaluate_step, step_params
    from roadseg.tracking import resolve_tracking_uri

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides,
                         params_hash=dataset.metadata["params_hash"])  # fmt: skip
    local = dict(json.loads(candidate), checkpoint=os.path.join(model.path, "best.pt"))
    scored = evaluate_step(local, dataset.path, params,
                           tracking_uri=resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")))  # fmt: skip
    for key in ("pixel_accuracy", "mean_accuracy", "miou", "mdice"):
        if scored["metrics"].get(key) is not None:
            metrics.log_metric(f"{scored['metrics']['split']}_{key}", scored["metrics"][key])
    return json.dumps(scored)
