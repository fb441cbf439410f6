"""params.yaml loading: overrides, unknown keys, and the 19→14 mapping checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from roadseg.config import DEFAULT_PARAMS, ParamsError, load_params, parse_params


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(DEFAULT_PARAMS.read_text())


def test_defaults_load_and_lut_matches_mapping(params):
    lut = params.data.lookup_table()
    assert lut.shape == (256,) and lut.dtype.name == "uint8"
    for src, dst in params.data.mapping.items():
        assert lut[src] == dst
    assert lut[255] == 255 and lut[19] == 255  # ids outside the table stay ignore
    assert params.data.num_classes == 14 and len(params.data.source_classes) == 19


def test_overrides_are_typed_and_change_the_digest(params):
    p = load_params(
        overrides=["train.epochs=2", "model.base_channels=8", "remap.link_images=false"]
    )
    assert p.train.epochs == 2 and p.model.base_channels == 8 and p.remap.link_images is False
    assert p.digest() != params.digest()


def test_unknown_key_is_named(raw):
    with pytest.raises(ParamsError, match=r"train\.epoch"):
        parse_params(raw, ["train.epoch=3"])
    raw["synth"]["colour"] = 1
    with pytest.raises(ParamsError, match="colour"):
        parse_params(raw)


def test_invalid_value_is_named(raw):
    with pytest.raises(ParamsError, match=r"train\.epochs"):
        parse_params(raw, ["train.epochs=zero"])


def test_mapping_not_total_is_rejected(raw):
    del raw["data"]["mapping"][7]
    with pytest.raises(ParamsError, match=r"not total.*\[7\]"):
        parse_params(raw)


def test_mapping_beyond_range_is_rejected(raw):
    with pytest.raises(ParamsError, match="beyond the 14 merged classes"):
        parse_params(raw, ["data.mapping.3=14"])
    # 255 (ignore) is allowed as a target
    assert parse_params(raw, ["data.mapping.3=255"]).data.lookup_table()[3] == 255


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ParamsError, match=r"dotted\.key=value"):
        load_params(overrides=["train.epochs"])
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_loss_and_model_names_have_one_home():
    """`roadseg.config.LossName` / `ModelName` are the lists; the factories, the pipeline's default
    variants and params.yaml agree with them."""
    from pipelines.training_pipeline import DEFAULT_LOSSES
    from roadseg.config import LOSS_NAMES, MODEL_NAMES, PipelineParams
    from roadseg.losses import LOSSES, WEIGHTED_LOSSES
    from roadseg.models import MODELS

    assert tuple(LOSSES) == LOSS_NAMES
    assert set(WEIGHTED_LOSSES) <= set(LOSS_NAMES)
    assert tuple(MODELS) == MODEL_NAMES
    assert (
        DEFAULT_LOSSES
        == list(PipelineParams().loss_variants)
        == list(load_params().pipeline.loss_variants)
    )


def test_every_params_key_is_read_somewhere():
    """A key of params.yaml that no code reads is a fact with no home (pipeline.host was one).

    Read means: an attribute (`p.train.lr`, `tp.lr`) or a quoted name (`getattr(p, "lr")`) in the
    code (benchmarks included), or named in dvc.yaml (`${train.lr}`, a stage's params list).
    """
    import re

    repo = Path(__file__).resolve().parents[2]
    code = "\n".join(
        p.read_text()
        for pkg in ("roadseg", "bento", "components", "pipelines", "benchmarks")
        for p in (repo / pkg).rglob("*.py")
    )
    dvc = (repo / "dvc.yaml").read_text()
    unread = [
        f"{section}.{key}"
        for section, values in load_params().to_dict().items()
        for key in values
        if not re.search(rf"[.\"']{key}\b", code) and f"{section}.{key}" not in dvc
    ]
    assert not unread, f"params.yaml keys read by nothing: {unread}"
