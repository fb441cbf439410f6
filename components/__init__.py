"""Kubeflow Pipelines v2 components: thin wrappers that call one `roadseg.pipeline.steps` function each.

Bodies import `roadseg` inside (they run in the project image, `ROADSEG_IMAGE`); no
`packages_to_install`, and no kfp install at run time (the image ships kfp).
"""

from components._image import ROADSEG_IMAGE
from components.deploy import deploy
from components.evaluate import evaluate
from components.load_data import load_data
from components.package import package
from components.register_best import register_best
from components.remap_labels import remap_labels
from components.train import train
from components.validate_labels import validate_labels

__all__ = [
    "ROADSEG_IMAGE",
    "deploy",
    "evaluate",
    "load_data",
    "package",
    "register_best",
    "remap_labels",
    "train",
    "validate_labels",
]
