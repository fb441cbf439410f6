"""Component: Great Expectations label validation; violations fail the run before training."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def validate_labels(
    dataset: Input[Dataset],
    data_docs: Output[HTML],
    params_file: str,
    overrides: list,
    params_hash: str,
    dataset_digest: str,
) -> None:
    """Validate every image/mask pair; the Data Docs page becomes the HTML artifact."""
    import os
    import shutil
    from pathlib import Path

    from roadseg.pipeline.steps import step_params, validate_step

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides,
                         params_hash=params_hash)  # fmt: skip
    report_dir = Path(data_docs.path).parent / "validation"
    result = validate_step(dataset.path, params, report_dir)  # raises on violations
    shutil.copyfile(result.data_docs_path, data_docs.path)
    data_docs.metadata.update({"files": result.n_files, "dataset_digest": dataset_digest})
