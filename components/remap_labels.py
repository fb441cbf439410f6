"""Component: remap the labels 19 -> 14 classes and compute the class statistics."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def remap_labels(
    dataset: Input[Dataset],
    remapped: Output[Dataset],
    class_stats: Output[Artifact],
    params_file: str,
    overrides: list,
    params_hash: str,
    dataset_digest: str,
) -> None:
    """Write the remapped dataset (with class_stats.json) and the statistics on their own."""
    import json
    import os
    from pathlib import Path

    from roadseg.pipeline.steps import remap_step, step_params

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides,
                         params_hash=params_hash)  # fmt: skip
    summary = remap_step(dataset.path, remapped.path, params)
    Path(class_stats.path).write_text(json.dumps(summary.get("class_stats"), indent=2))
    remapped.metadata.update({"dataset_digest": dataset_digest, "params_hash": params_hash})
