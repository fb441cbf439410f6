"""Component: package the new champion into a self-contained Bento (the `.bento` archive)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from components._image import ROADSEG_IMAGE


@dsl.component(base_image=ROADSEG_IMAGE, install_kfp_package=False)
def package(
    registration: str,
    dataset: Input[Dataset],
    params_file: str,
    overrides: list,
    bento: Output[Artifact],
) -> str:
    """The registration result plus `package`: the Bento of the champion when it moved (the
    archive is the output artifact), else why not; with `package.int8`, the int8 variant tried
    on the remapped `dataset`. JSON."""
    import json
    import os
    import shutil
    import tempfile

    from roadseg.pipeline.steps import step_params
    from roadseg.release.rollout import package_step
    from roadseg.tracking import resolve_tracking_uri

    params = step_params(params_file or os.environ.get("ROADSEG_PARAMS"), overrides)
    with tempfile.TemporaryDirectory() as tmp:
        registered = json.loads(registration)
        result = package_step(registered, params, export_dir=tmp,
                              tracking_uri=resolve_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")),
                              int8_data=dataset.path if params.package.int8 else None)  # fmt: skip
        if result.get("archive"):
            shutil.copyfile(result["archive"], bento.path)
        else:  # nothing packaged: the artifact says why
            with open(bento.path, "w") as f:
                f.write(result["reason"] + "\n")
    bento.metadata.update({k: result[k] for k in ("packaged", "bento_tag") if k in result})
    print(result.get("serve_command") or result["reason"])
    return json.dumps({**registered, "package": result})
