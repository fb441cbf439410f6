"""Component: train one loss variant; the model artifact, the MLflow run and val metrics."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def train(
    dataset: Input[Dataset],
    loss: str,
    model_name: str,
    init_from: str,
    model: Output[Model],
    metrics: Output[Metrics],
    params_file: str,
    overrides: list,
) -> str:
    """Checkpoints go into the model artifact; returns the candidate (run id, model URI, scores) as JSON.

    The params hash and dataset digest come with the remapped dataset (its metadata; see
    pipelines/training_pipeline.py for why they are not plain inputs inside the loop).
    """
    import json
    import os

    from roadseg.pipeline.steps import step_params, train_step
    from roadseg.tracking import resolve_tracking_uri

    params_hash, dataset_digest = (
        dataset.metadata["params_hash"],
        dataset.metadata["dataset_digest"],
    )
    extra = [f"loss.name={loss}", f"model.name={model_name}", f"train.checkpoint_dir={model.path}"]
    extra += [f"train.init_from={init_from}"] if init_from else []
    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides,
                         params_hash=params_hash, extra=extra)  # fmt: skip
    candidate = train_step(dataset.path, params,
                           tracking_uri=resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")),
                           tags={"dataset_digest": dataset_digest, "params_hash": params_hash})  # fmt: skip
    for key in ("pixel_accuracy", "mean_accuracy", "miou", "mdice"):
        if candidate["train_val"].get(key) is not None:
            metrics.log_metric(f"val_{key}", candidate["train_val"][key])
    model.metadata.update({k: candidate[k] for k in ("loss", "run_id", "model_uri")})
    # JSON text, not a dict: scores hold None (absent classes), which KFP parameters reject.
    return json.dumps(candidate)
