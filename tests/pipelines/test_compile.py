"""The compiled pipeline IR: loop over the loss variants, fan-in, GPU scheduling, shm, env wiring."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipelines.training_pipeline import compile_pipeline
from roadseg.config import load_params

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "pipelines/training_pipeline.yaml"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_pipeline(tmp_path_factory.mktemp("ir") / "training_pipeline.yaml")


@pytest.fixture(scope="module")
def ir(compiled: Path) -> tuple[dict, dict]:
    spec, platform = list(yaml.safe_load_all(compiled.read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_ir_is_up_to_date(compiled: Path) -> None:
    assert COMMITTED.is_file(), "run: roadseg pipeline compile"
    assert COMMITTED.read_text() == compiled.read_text(), (
        "pipelines/training_pipeline.yaml is stale: run `roadseg pipeline compile`"
    )


def test_committed_ir_was_compiled_by_the_locked_kfp() -> None:
    """The IR records the SDK that compiled it; an unlocked kfp upgrade shows up here first."""
    from scripts.lockfile import read_lock

    kfp = read_lock(REPO / "requirements/lock.txt")["kfp"]
    assert f"sdkVersion: kfp-{kfp}\n" in COMMITTED.read_text(), (
        f"requirements/lock.txt has kfp {kfp}: recompile (roadseg pipeline compile)"
    )


def test_loop_iterates_the_loss_variants_and_fans_in(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["loss_variants"]["defaultValue"] == ["wce", "ohem", "dice", "dice_ce"]
    loops = {k: t for k, t in spec["root"]["dag"]["tasks"].items() if "parameterIterator" in t}
    assert len(loops) == 1
    (loop,) = loops.values()
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--loss_variants"
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    assert set(body) == {"train", "evaluate"}
    assert body["train"]["inputs"]["parameters"]["loss"]["componentInputParameter"].endswith(
        "loop-item"
    )
    register = spec["root"]["dag"]["tasks"]["register-best"]
    # dsl.Collected: the register task consumes the loop's output, after every iteration.
    candidates = register["inputs"]["parameters"]["candidates"]["taskOutputParameter"]
    assert candidates["producerTask"] == next(iter(loops))
    assert register["cachingOptions"] == {}  # caching off: it changes the registry
    for task in ("validate-labels", "remap-labels", "register-best"):
        params = spec["root"]["dag"]["tasks"][task]["inputs"]["parameters"]
        assert {"params_hash", "dataset_digest"} <= set(params), task
    assert spec["root"]["dag"]["tasks"]["remap-labels"]["dependentTasks"] == [
        "load-data",
        "validate-labels",
    ]


def test_train_task_requests_a_gpu_node_with_shm(ir: tuple[dict, dict]) -> None:
    spec, k8s = ir
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["image"].startswith("ghcr.io/roadseg/roadseg-pipeline:")
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["cpuRequest"] > 0 and train["resources"]["memoryLimit"] > 0
    assert "pip install" not in " ".join(train["command"])  # no packages installed at run time
    ex = k8s["exec-train"]
    assert ex["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
    assert ex["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    (shm,) = ex["emptyDirMounts"]
    assert shm["mountPath"] == "/dev/shm" and shm["medium"] == "Memory"
    assert int(ex["activeDeadlineSeconds"]) > 0
    assert "nodeSelector" not in k8s["exec-evaluate"]  # only training holds a GPU


def test_every_task_reads_mlflow_settings_from_configmap_and_secret(ir: tuple[dict, dict]) -> None:
    spec, k8s = ir
    assert set(k8s) == set(spec["deploymentSpec"]["executors"])
    for name, ex in k8s.items():
        (cm,) = ex["configMapAsEnv"]
        assert cm["configMapName"] == "roadseg-pipeline-config", name
        assert cm["keyToEnv"] == [
            {"configMapKey": "MLFLOW_TRACKING_URI", "envVar": "MLFLOW_TRACKING_URI"}
        ]
        (secret,) = ex["secretAsEnv"]
        assert secret["secretName"] == "roadseg-mlflow-credentials", name
        assert {k["secretKey"] for k in secret["keyToEnv"]} == {
            "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD",
        }


def test_model_and_init_from_reach_every_training_variant(ir: tuple[dict, dict]) -> None:
    spec, _ = ir
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert inputs["model"]["defaultValue"] == load_params().model.name == "unet_effnet_lite0"
    assert inputs["init_from"]["defaultValue"] == ""
    loop = next(t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t)
    train = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]["train"]
    given = train["inputs"]["parameters"]
    assert given["init_from"]["componentInputParameter"] == "pipelinechannel--init_from"
    assert given["model_name"]["componentInputParameter"] == "pipelinechannel--model"


def test_package_reads_the_remapped_dataset_for_int8(ir: tuple[dict, dict]) -> None:
    """`package.int8` calibrates on the run's own remapped dataset: the package task gets it."""
    spec, _ = ir
    package = spec["root"]["dag"]["tasks"]["package"]
    dataset = package["inputs"]["artifacts"]["dataset"]["taskOutputArtifact"]
    assert dataset == {"outputArtifactKey": "remapped", "producerTask": "remap-labels"}
