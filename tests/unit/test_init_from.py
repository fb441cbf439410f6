"""`train.init_from`: a run starts from another model's weights (a checkpoint or a registered
model) with that model's normalisation, and refuses a model of another shape."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from roadseg.models.spec import ModelSpec
from roadseg.testing import register_random_model, save_random_checkpoint
from roadseg.train.setup import build_data, initial_model, load_init_model, setup_runtime


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


def test_a_run_starts_from_a_checkpoints_weights(tmp_path: Path) -> None:
    source, spec = save_random_checkpoint(tmp_path / "synthetic.pt", base_channels=4, seed=3)
    init = load_init_model(str(tmp_path / "synthetic.pt"), None)
    model = initial_model(spec, resumed=False, init=init)
    _assert_same_weights(model, source)
    fresh = initial_model(spec, resumed=False, init=None)
    assert not torch.equal(next(iter(fresh.parameters())), next(iter(source.parameters())))


def test_a_model_of_another_shape_is_refused_naming_the_difference(tmp_path: Path) -> None:
    _, spec = save_random_checkpoint(tmp_path / "m.pt", base_channels=4, seed=0)
    init = load_init_model(str(tmp_path / "m.pt"), None)
    wider = ModelSpec.from_dict(spec.to_dict() | {"base_channels": 8})
    with pytest.raises(ValueError, match="base_channels is 4, this run's 8"):
        initial_model(wider, resumed=False, init=init)
    binary = ModelSpec.from_dict(spec.to_dict() | {"num_classes": 2, "class_names": ["a", "b"],
                                                   "colors": [[0, 0, 0], [1, 1, 1]]})  # fmt: skip
    with pytest.raises(ValueError, match="num_classes"):
        initial_model(binary, resumed=False, init=init)


def test_init_from_a_registered_model_takes_its_weights(tmp_path: Path) -> None:
    from roadseg.models.io import load_model

    tracking = f"sqlite:///{tmp_path / 'mlruns.db'}"
    version = register_random_model(tracking, base_channels=4, seed=5)
    uri = f"models:/roadseg-unet/{version}"
    init = load_init_model(uri, tracking)
    registered, spec, _ = load_model(uri)
    _assert_same_weights(initial_model(spec, resumed=False, init=init), registered)


def test_fine_tuning_keeps_the_source_models_normalisation(synth_dir, tmp_path) -> None:
    from roadseg.config import load_params

    params = load_params(overrides=["model.name=unet", "model.base_channels=4"])  # the source's
    _, spec = save_random_checkpoint(tmp_path / "m.pt", base_channels=4, seed=0)
    init = load_init_model(str(tmp_path / "m.pt"), None)
    data = build_data(params, synth_dir, setup_runtime("cpu"), init=init)
    assert (data.spec.mean, data.spec.std) == (spec.mean, spec.std) == ((0.4,) * 3, (0.25,) * 3)
    assert build_data(params, synth_dir, setup_runtime("cpu")).spec.mean != spec.mean
