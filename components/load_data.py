"""Component: fetch the raw dataset (synthetic, a local directory, or a DVC revision)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def load_data(
    dataset: Output[Dataset],
    params_file: str,
    overrides: list,
    synthetic: bool = True,
    data_dir: str = "",
    data_rev: str = "",
    data_repo: str = "",
) -> NamedTuple("LoadDataOutputs", [("dataset_digest", str), ("params_hash", str)]):
    """Write the dataset artifact; return its digest and the run's params hash (cache keys)."""
    import os
    from collections import namedtuple

    from roadseg.pipeline.steps import fetch_dataset, step_params

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides)
    info = fetch_dataset(dataset.path, params, synthetic=synthetic, data_dir=data_dir,
                         data_rev=data_rev, data_repo=data_repo)  # fmt: skip
    dataset.metadata.update(info)
    outputs = namedtuple("LoadDataOutputs", ["dataset_digest", "params_hash"])
    return outputs(info["digest"], params.digest())
