"""The training pipeline: load → validate → remap → (train → evaluate) per loss variant → register.

Loss variants fan out with `dsl.ParallelFor` (each training task on its own GPU node) and fan in
with `dsl.Collected` into `register_best`. Every task reads MLFLOW_TRACKING_URI from the
ConfigMap `roadseg-pipeline-config` and the MLflow credentials from the Secret
`roadseg-mlflow-credentials`. The dataset digest and the params hash are explicit inputs of load, validate,
remap and register (and metadata of the remapped dataset the loop tasks read), so KFP caching
never reuses a result across a changed dataset or remap.

    python -m pipelines.training_pipeline            # writes pipelines/training_pipeline.yaml
    roadseg pipeline compile --out pipelines/training_pipeline.yaml
    roadseg pipeline run --local                     # the same DAG on this machine (kfp.local)
"""

import sys
from pathlib import Path

from kfp import compiler, dsl, kubernetes

from components import (
    deploy,
    evaluate,
    load_data,
    package,
    register_best,
    remap_labels,
    train,
    validate_labels,
)
from roadseg.config import PipelineParams

PIPELINE_NAME = "roadseg-training"
DEFAULT_LOSSES = list(PipelineParams().loss_variants)  # params.yaml's default, from one home
IR_PATH = Path(__file__).with_suffix(".yaml")

# Names shared with the Kubernetes manifests (k8s/base/pipeline/).
CONFIG_MAP = "roadseg-pipeline-config"
CREDENTIALS_SECRET = "roadseg-mlflow-credentials"
# GPU nodes: the label the NVIDIA GPU operator puts on them, and the taint that keeps others off.
GPU_NODE_LABEL = ("nvidia.com/gpu.present", "true")
GPU_TAINT_KEY = "nvidia.com/gpu"
TRAIN_TIMEOUT_S = 6 * 3600
DEPLOY_TIMEOUT_S = 2 * 3600  # image build + rollout wait, each bounded by params.deploy
SHM_SIZE = "8Gi"  # DataLoader workers pass batches through /dev/shm (64 MiB by default)


def with_tracking_env(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """MLflow URI from the ConfigMap, credentials from the Secret (optional: an open server)."""
    kubernetes.use_config_map_as_env(
        task, CONFIG_MAP, {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI"}
    )
    kubernetes.use_secret_as_env(
        task,
        CREDENTIALS_SECRET,
        {
            "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
            "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD",
        },
        optional=True,
    )
    return task


def on_gpu_node(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """One GPU, CPU/memory for the data loaders, a GPU node, a big /dev/shm and a timeout."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
    task.set_cpu_request("4").set_cpu_limit("8")
    task.set_memory_request("16G").set_memory_limit("32G")
    kubernetes.add_node_selector(task, *GPU_NODE_LABEL)
    kubernetes.add_toleration(task, key=GPU_TAINT_KEY, operator="Exists", effect="NoSchedule")
    kubernetes.empty_dir_mount(
        task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=SHM_SIZE
    )
    kubernetes.set_timeout(task, TRAIN_TIMEOUT_S)
    return task


def on_cpu_node(task: dsl.PipelineTask, cpu: str = "1", memory: str = "4G") -> dsl.PipelineTask:
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    return task


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Validate and remap BDD100k labels, train loss variants in parallel on GPU nodes, "
    "evaluate, and register the best model in MLflow (gated champion promotion).",
)
def training_pipeline(
    loss_variants: list = DEFAULT_LOSSES,
    model: str = "unet_effnet_lite0",
    init_from: str = "",
    synthetic: bool = True,
    data_dir: str = "",
    data_rev: str = "",
    data_repo: str = "",
    params_file: str = "",
    overrides: list = [],  # noqa: B006
    git_commit: str = "",
) -> str:
    """Args: `model` is the network of every variant (`unet_effnet_lite0`: the ImageNet encoder);
    `init_from` a model URI every variant is fine-tuned from (e.g. the champion of synthetic
    scenes, for real images); `overrides` are `dotted.key=value` params overrides; the dataset
    comes from `data_dir` (local runs), else `data_rev` of `data_repo` (`dvc get`), else
    synthetic."""
    common = {"params_file": params_file, "overrides": overrides}
    load = load_data(synthetic=synthetic, data_dir=data_dir, data_rev=data_rev,
                     data_repo=data_repo, **common).set_display_name("load data")  # fmt: skip
    keys = {
        "params_hash": load.outputs["params_hash"],
        "dataset_digest": load.outputs["dataset_digest"],
    }
    check = validate_labels(dataset=load.outputs["dataset"], **common, **keys)
    check.set_display_name("validate labels")
    remap = remap_labels(dataset=load.outputs["dataset"], **common, **keys).after(check)
    remap.set_display_name("remap labels 19→14")
    for task in (load, check, remap):
        on_cpu_node(with_tracking_env(task), cpu="2", memory="8G")

    # Inside the loop the hash and digest travel as metadata of the remapped dataset, not as
    # parameters: kfp.local 2.17 replaces every upstream task-output parameter entering a
    # ParallelFor with the loop item (kfp/local/orchestrator/task_spec_utils.py,
    # create_parameter_loop_iteration_task_spec). On a cluster the cache keys stay right either
    # way: the remapped artifact is new whenever the digest or the hash changes.
    with dsl.ParallelFor(loss_variants, name="loss-variants") as loss:
        fit = train(dataset=remap.outputs["remapped"], loss=loss, model_name=model,
                    init_from=init_from, **common)  # fmt: skip
        on_gpu_node(with_tracking_env(fit.set_display_name("train")))
        score = evaluate(
            dataset=remap.outputs["remapped"],
            model=fit.outputs["model"],
            candidate=fit.outputs["Output"],
            **common,
        )
        on_cpu_node(with_tracking_env(score.set_display_name("evaluate")), cpu="2", memory="8G")

    best = register_best(
        candidates=dsl.Collected(score.outputs["Output"]),
        dataset=remap.outputs["remapped"],
        git_commit=git_commit,
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **common,
        **keys,
    )
    best.set_display_name("register best").set_caching_options(False)  # it changes the registry
    on_cpu_node(with_tracking_env(best), cpu="2", memory="8G")
    # The new champion becomes a self-contained Bento; `deploy` builds its image in the cluster
    # and rolls it out (it skips, saying why, when deploy.enabled is off or outside a cluster).
    bento = package(registration=best.output, dataset=remap.outputs["remapped"], **common)
    bento.set_display_name("package bento")
    bento.set_caching_options(False)
    on_cpu_node(with_tracking_env(bento), cpu="2", memory="4G")
    # Runs as the pipeline's service account, which k8s/base/deploy/rbac.yaml binds to the
    # least-privilege Role `roadseg-deploy`.
    rollout = deploy(packaged=bento.outputs["Output"], **common).set_display_name("deploy")
    rollout.set_caching_options(False)
    kubernetes.set_timeout(rollout, DEPLOY_TIMEOUT_S)
    on_cpu_node(with_tracking_env(rollout), cpu="500m", memory="1G")
    return rollout.output  # the registration, with `package` and `deploy` added


def compile_pipeline(package_path: str | Path = IR_PATH) -> Path:
    """Write the pipeline IR (YAML) to `package_path` (its folder created); `roadseg pipeline
    compile` calls this."""
    Path(package_path).parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(training_pipeline, package_path=str(package_path))
    return Path(package_path)


if __name__ == "__main__":
    print(compile_pipeline(sys.argv[1] if len(sys.argv) > 1 else IR_PATH))
