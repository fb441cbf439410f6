"""BentoML service for the road-segmentation model (the routes live in `roadseg/api.py`).

Loads the model named by ROADSEG_MODEL_URI (default `models:/roadseg-unet@champion`, from the
MLflow server at MLFLOW_TRACKING_URI) once per worker, on the GPU when there is one, warms it up,
and only then reports ready on /readyz::

    ROADSEG_MODEL_URI=models:/roadseg-unet@champion bentoml serve bento.service:RoadSegService --port 3000

Other environment: ROADSEG_API_KEY (require header X-API-Key), ROADSEG_MONITOR_DIR (monitoring
log; default params drift.log_dir), ROADSEG_PARAMS (params file for limits and batching).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import bentoml

from roadseg.api import GuardMiddleware, ServingState, build_app

DEFAULT_MODEL_URI = "models:/roadseg-unet@champion"
STATE = ServingState(ui_dir=Path(__file__).resolve().parent / "ui")
app = build_app(STATE)


@bentoml.service(name="roadseg", traffic={"timeout": 300}, http={"port": 3000})
@bentoml.asgi_app(app, path="/")
class RoadSegService:
    def __init__(self) -> None:
        from roadseg.batching import create_engine
        from roadseg.config import load_params
        from roadseg.inputs import Limits
        from roadseg.monitoring import MonitorLog

        params = load_params(os.environ.get("ROADSEG_PARAMS") or None)
        uri = os.environ.get("ROADSEG_MODEL_URI", DEFAULT_MODEL_URI)
        latency = bentoml.metrics.Histogram(
            name="roadseg_inference_latency_seconds",
            documentation="Model forward time per batch",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        batch = bentoml.metrics.Histogram(
            name="roadseg_batch_size",
            documentation="Images per model forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )

        def observe(size: int, seconds: float) -> None:
            latency.observe(seconds)
            batch.observe(size)

        STATE.limits = Limits.from_params(params.serve)
        STATE.api_key = os.environ.get("ROADSEG_API_KEY") or None
        STATE.overlay_alpha = params.serve.overlay_alpha
        # One file per pod: appends from several pods to one file on a shared (NFS-type) volume
        # are not atomic, appends within one pod are.
        STATE.monitor = MonitorLog(
            os.environ.get("ROADSEG_MONITOR_DIR") or params.drift.log_dir,
            prefix=f"features-{os.environ.get('POD_NAME') or socket.gethostname()}",
        )
        engine, STATE.metadata = create_engine(
            uri,
            max_batch_size=params.serve.batch_size,
            observer=observe,
            warm_up=True,
        )
        STATE.engine = engine
        bentoml.metrics.Gauge(
            name="roadseg_model_info",
            documentation="The served model (value 1)",
            labelnames=["model_name", "version", "run_id"],
        ).labels(
            model_name=STATE.metadata["model_name"],
            version=STATE.metadata["version"],
            run_id=str(STATE.metadata["run_id"]),
        ).set(1)

    def __is_ready__(self) -> bool:
        return STATE.engine is not None and STATE.engine.ready


RoadSegService.add_asgi_middleware(GuardMiddleware, state=STATE)
