"""What runs the network in the service: eager PyTorch, or the packaged `model.onnx` in ONNX
Runtime, or its int8 variant `model.int8.onnx` (`onnxruntime_int8`: only from a Bento packaged
with `roadseg package --int8`) (`serve.backend`, or ROADSEG_BACKEND). Docs: API, Serving backends.

`OnnxRuntimeModel` is an `nn.Module` whose forward runs an ONNX Runtime session, so the batching
engine, `roadseg.inference.predict` and every route use either backend through one interface:
the same prepared inputs go in, the same (N, C, H, W) float32 logits come out.

    model = load_backend("onnxruntime", torch_model, spec, onnx_path=None)  # exported on the fly
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from roadseg.config import BACKEND_NAMES
from roadseg.models.onnx import INPUT_NAME
from roadseg.models.quantize import ONNX_INT8_FILE
from roadseg.models.spec import ModelSpec

log = logging.getLogger(__name__)
CGROUP = Path("/sys/fs/cgroup")
INT8 = "onnxruntime_int8"


class Int8NotShipped(RuntimeError):
    """`onnxruntime_int8` over a model with no `model.int8.onnx`: names the model and why."""


def int8_missing(info: Mapping[str, Any]) -> str:
    """Why the model of `info` (`load_packaged_model`'s or `load_model`'s) has no int8 file, in
    one line: the packaging's recorded reason (`int8`, `int8_reason` labels) when it tried."""
    labels = info.get("lineage") or {}
    name = info.get("name") or info.get("uri")  # a checkpoint has no registered name
    model = f"{name} v{info.get('mlflow_version') or info.get('version')}"
    if "int8" in labels:
        why = f"{labels['int8']}: {labels.get('int8_reason', 'no reason recorded')}"
    elif info.get("source") == "bento":
        why = "packaged without `roadseg package --int8 DATA_DIR`"
    else:  # MLflow or a checkpoint: quantising needs calibration images, never done at start
        why = "not a Bento: package it with `roadseg package --int8 DATA_DIR`"
    return (f"serve.backend {INT8}: model {model} has no {ONNX_INT8_FILE}, its int8 variant was "
            f"not shipped ({why})")  # fmt: skip


def onnx_file_for(backend: str, info: Mapping[str, Any]) -> str | None:
    """The packaged ONNX file `backend` runs: model.onnx (None: exported at start), or for
    onnxruntime_int8 model.int8.onnx.

    Raises:
        Int8NotShipped: onnxruntime_int8 and no int8 file (`int8_missing` says why).
    """
    if backend != INT8:
        return info.get("onnx_path")
    if not info.get("onnx_int8_path"):
        raise Int8NotShipped(int8_missing(info))
    return str(info["onnx_int8_path"])


def quota_cpus(cpu_max: str | None, cfs: tuple[str, str] | None = None) -> float | None:
    """The CPUs a cgroup quota allows: cgroup v2's `cpu.max` ("200000 100000" -> 2.0, "max
    100000" -> None) or v1's (cfs_quota_us, cfs_period_us) ("-1" -> None)."""
    quota, period = [*cpu_max.split(), "100000"][:2] if cpu_max else (cfs or ("-1", "1"))
    if quota in ("max", "-1") or float(period) <= 0:
        return None
    return float(quota) / float(period)


def intra_op_threads(affinity: int, quota: float | None) -> int:
    """Threads for one inference: the CPUs this process may run on, capped by the pod's CPU
    limit (rounded up: a 1.5-CPU limit runs 2 threads, each throttled a little, faster than 1)."""
    n = affinity if quota is None else min(affinity, math.ceil(quota))
    return max(1, n)


def cpu_limit(cgroup: Path = CGROUP) -> int:
    """`intra_op_threads` of this process: its CPU affinity and its cgroup's quota (the pod's
    `resources.limits.cpu`). os.cpu_count() would give the node's cores, and a pod limited to 2
    of 64 cores would run 64 threads, each descheduled most of the time."""

    def read(name: str) -> str | None:
        try:
            return (cgroup / name).read_text().strip()
        except OSError:
            return None

    cfs = read("cpu/cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us")
    quota = quota_cpus(read("cpu.max"), cfs if None not in cfs else None)  # type: ignore[arg-type]
    return intra_op_threads(len(os.sched_getaffinity(0)), quota)


def session_options(threads: int) -> Any:
    """ONNX Runtime's session options, each on purpose (documented in API, Serving backends)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # All graph optimisations: Conv+BatchNorm+ReLU fusion, constant folding and the NCHWc layout
    # that runs x86 convolutions in blocked vector form (most of the gain over eager torch).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # One inference at a time (the engine has one inference thread) over the pod's CPUs; the
    # graph is a chain, so no inter-op parallelism to win.
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # The arena keeps activation buffers between runs (the served shapes repeat: image_size at a
    # few batch sizes), so a batch allocates nothing; its peak is one max batch's activations.
    opts.enable_cpu_mem_arena = True
    opts.enable_mem_pattern = True
    # Idle pool threads sleep instead of spinning: between batches the request threads resize
    # images and upsample masks on the same cores, and spinning threads would take them.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


class OnnxRuntimeModel(nn.Module):
    """An ONNX model as an inference-only `nn.Module`: (N, 3, H, W) float32 -> logits.

    Runs on the CPU (the CPU execution provider); inputs on another device are copied over.
    """

    def __init__(self, onnx_path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        self.threads = threads or cpu_limit()
        self.onnx_path = str(onnx_path)
        self.session = ort.InferenceSession(
            self.onnx_path, session_options(self.threads), providers=["CPUExecutionProvider"]
        )
        self.runtime_version = ort.__version__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to("cpu", torch.float32).contiguous()
        return torch.from_numpy(self.session.run(None, {INPUT_NAME: x.numpy()})[0])

    def train(self, mode: bool = True) -> OnnxRuntimeModel:
        if mode:
            raise RuntimeError("an ONNX Runtime model is for inference only")
        return super().train(False)


def load_backend(
    backend: str,
    model: nn.Module,
    spec: ModelSpec,
    *,
    onnx_path: str | Path | None = None,
    threads: int | None = None,
) -> nn.Module:
    """The network the engine runs: `model` itself for torch; for onnxruntime a session over
    `onnx_path` (the packaged model.onnx) or, without one (a model from MLflow or a
    checkpoint), over `model` exported now into a temporary file; for onnxruntime_int8 a
    session over `onnx_path` (model.int8.onnx, `onnx_file_for`), the same session options.

    Raises:
        ValueError: for an unknown backend name.
        Int8NotShipped: onnxruntime_int8 without `onnx_path`.
    """
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown serve backend {backend!r}; known: {', '.join(BACKEND_NAMES)}")
    if backend == "torch":
        # torch's pool is per process: in-process this also bounds the post-processing's ops
        torch.set_num_threads(threads or cpu_limit())
        return model
    if onnx_path is not None:
        return OnnxRuntimeModel(onnx_path, threads=threads)
    if backend == INT8:
        raise Int8NotShipped(f"serve.backend {INT8} needs {ONNX_INT8_FILE} for {spec.model_name}")
    from roadseg.models.onnx import ONNX_FILE, export_onnx

    log.warning("no packaged %s for %s: exporting it now", ONNX_FILE, spec.model_name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ONNX_FILE
        export_onnx(model, spec, path)
        return OnnxRuntimeModel(path, threads=threads)  # the session holds the graph in memory
