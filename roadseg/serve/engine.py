"""Adaptive batching of concurrent requests onto one model (the serving hot path).

Every endpoint submits its images to one `InferenceEngine`; a single worker takes what is queued
(up to `max_batch_size` images, waiting at most `max_wait_ms` for more once the first arrives)
and runs the model on it in one thread. While a batch runs, new requests queue up, so the batch
size adapts to the load with no added latency when idle. The inference thread runs only the
network: each request resizes its own images before it queues them and turns its logits into
full-resolution masks after (`roadseg.inference.predict.prepare` / `postprocess`, in a worker thread), so
that work runs beside the next forward pass instead of in front of it (the same pixels as
`roadseg.inference.predict.predict`, which composes the same three steps). Batches are filled
round robin, one image per waiting request in turn, so a 256-image ZIP cannot starve the
single-image requests that arrive behind it.
The network is eager torch or ONNX Runtime (`roadseg.serve.backends`, `serve.backend`): both are
an `nn.Module` from prepared inputs to logits, so nothing here depends on which.
We batch here rather than with a `@bentoml.api(batchable=True)` method because BentoML only
batches calls that arrive through its own HTTP routes, and the legacy multipart/ZIP/video
endpoints live on a mounted FastAPI app; one queue serves them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from roadseg.inference.predict import Prediction, forward, postprocess, predict, prepare
from roadseg.models.spec import ModelSpec
from roadseg.serve.backends import cpu_limit, load_backend, onnx_file_for
from roadseg.serve.modelproc import ModelProcess, ModelWorkerDied

logger = logging.getLogger(__name__)
# (batch_size, seconds) after each forward pass, for metrics.
Observer = Callable[[int, float], None]
# (images, predictions) of one request, once its predictions are made.
AfterHook = Callable[[Sequence[np.ndarray], list[Prediction]], None]


class EngineUnavailable(RuntimeError):
    """The batching worker stopped (shutdown, or it died) with this request's images queued or
    in its batch: the request may be retried (503 + Retry-After), it never waits for nothing."""


class InferenceEngine:
    """A loaded model behind an asyncio batching queue."""

    def __init__(
        self,
        model: torch.nn.Module,
        spec: ModelSpec,
        info: dict[str, Any],
        *,
        device: str | torch.device = "cpu",
        max_batch_size: int = 8,
        max_wait_ms: float = 2.0,
        observer: Observer | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.spec = spec
        self.info = info
        self.device = torch.device(device)
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.observer = observer
        self.ready = False
        # Requests with images still to infer, in turn order: one deque of (image, future) each.
        self._requests: deque[deque] = deque()
        self._preparing = 0  # requests resizing their images: they will queue them next
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._in_batch: list[asyncio.Future] = []  # the futures of the batch being computed
        # One inference thread: the model is not re-entrant-safe on every backend and torch
        # already parallelises inside an op.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="roadseg-infer")

    @property
    def version(self) -> str:
        return str(self.info.get("version") or "unknown")

    def predict_now(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Synchronous batched prediction (no queue): warm-up, benchmarks, offline use."""
        start = time.perf_counter()
        out = predict(
            self.model, list(images), self.spec, device=self.device, batch_size=self.max_batch_size
        )
        if self.observer is not None:
            self.observer(len(images), time.perf_counter() - start)
        return out

    def warm_up(self, sizes: Sequence[tuple[int, int]] = ((360, 640),)) -> None:
        """Run dummy batches so the first request does not pay for lazy init; then mark ready."""
        for h, w in sizes:
            self.predict_now([np.zeros((h, w, 3), np.uint8)] * min(2, self.max_batch_size))
        self.ready = True

    async def predict(
        self, images: Sequence[np.ndarray], then: AfterHook | None = None
    ) -> list[Prediction]:
        """Queue the images and wait for their predictions (same order). `then(images, preds)`
        runs in the same worker thread once the predictions are made (monitoring), so it costs
        the event loop nothing; if it raises, that is logged and the request still succeeds."""
        if not images:
            return []
        self._preparing += 1
        try:
            inputs = await asyncio.to_thread(self._prepare, images)
        finally:
            self._preparing -= 1
        logits = await self._queue(inputs)
        return await asyncio.to_thread(self._postprocess, images, logits, then)

    def _prepare(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return [prepare(im, self.spec) for im in images]

    def _postprocess(
        self, images: Sequence[np.ndarray], logits: Sequence[torch.Tensor], then: AfterHook | None
    ) -> list[Prediction]:
        preds = [
            postprocess(lg, im.shape[0], im.shape[1], self.spec)
            for im, lg in zip(images, logits, strict=True)
        ]
        if then is not None:
            try:
                then(images, preds)
            except Exception:  # monitoring must never fail a request
                logger.exception("after-prediction hook failed")
        return preds

    async def _queue(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each prepared input's logits (C, h, w), through the batching worker."""
        self._ensure_worker()
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in inputs]
        self._requests.append(deque(zip(inputs, futures, strict=True)))
        self._arrived.set()
        try:
            return list(await asyncio.gather(*futures))
        except BaseException:
            # The request failed or its client went away (task cancelled): the worker skips
            # cancelled futures, so the rest of this request's images are never computed.
            for fut in futures:
                fut.cancel()
            raise

    def _forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        start = time.perf_counter()
        logits = forward(self.model, torch.stack(inputs), self.device)
        if self.observer is not None:
            self.observer(len(inputs), time.perf_counter() - start)
        return logits

    def _ensure_worker(self) -> None:
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()  # bound to this loop; queued requests are kept
            self._worker = asyncio.get_running_loop().create_task(self._run())

    def _take(self, n: int) -> list:
        """Up to n queued images, one per waiting request in turn (round robin), so a request of
        many images shares every batch with the requests that arrived after it instead of
        holding the model until it is done. Cancelled images are dropped here."""
        items: list = []
        while self._requests and len(items) < n:
            pending = self._requests.popleft()
            while pending and pending[0][1].done():
                pending.popleft()
            if pending:
                items.append(pending.popleft())
            if pending:
                self._requests.append(pending)
        return items

    async def _run(self) -> None:
        try:
            await self._serve_batches()
        finally:  # cancelled (shutdown) or died: nobody may wait for a batch that never comes
            self._fail_waiting(EngineUnavailable("the model worker stopped; retry the request"))

    def _fail_waiting(self, error: Exception) -> None:
        """Fail every request still waiting in the queue or in the batch being computed."""
        for fut in self._in_batch:
            if not fut.done():
                fut.set_exception(error)
        while self._requests:
            for _, fut in self._requests.popleft():
                if not fut.done():
                    fut.set_exception(error)

    async def _serve_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._requests:
                self._arrived.clear()
                await self._arrived.wait()
            items = self._take(self.max_batch_size)
            deadline = loop.time() + self.max_wait
            # A short wait for more images once the first is in, while other requests are
            # resizing theirs (about to queue): batches grow with the load, and a lone request
            # (one stream, one client) runs at once.
            while (
                len(items) < self.max_batch_size
                and self._preparing
                and (remaining := deadline - loop.time()) > 0
            ):
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                items += self._take(self.max_batch_size - len(items))
            live = [(im, fut) for im, fut in items if not fut.done()]  # drop cancelled requests
            self._in_batch = [fut for _, fut in live]
            if live:
                await self._run_batch(loop, live)
            self._in_batch = []

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, live: list) -> None:
        """One forward pass for the batch; on failure, input by input, so that one bad input
        fails only its own request and the worker keeps running."""
        try:
            logits = await loop.run_in_executor(self._executor, self._forward, [x for x, _ in live])
        except ModelWorkerDied as e:
            # The model process died with this batch (killed, crashed): its requests may be
            # retried (503 + Retry-After); the next batch starts a new process.
            logger.error("%s; %d request image(s) answered 503", e, len(live))
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(EngineUnavailable(f"{e}; retry the request"))
            return
        except Exception as e:
            if len(live) > 1:
                for item in live:
                    if not item[1].done():
                        await self._run_batch(loop, [item])
                return
            if not live[0][1].done():
                live[0][1].set_exception(e)
            return
        for (_, fut), lg in zip(live, logits, strict=True):
            if not fut.done():
                fut.set_result(lg)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False)
        if isinstance(self.model, ModelProcess):
            await asyncio.to_thread(self.model.close)


def model_metadata(spec: ModelSpec, info: dict[str, Any]) -> dict[str, Any]:
    """Name, version, run id and params hash of a loaded model (for `/metadata`)."""
    # a Bento carries it in its lineage labels, as MLflow's version tag `params_hash`
    digest = spec.extra.get("params_digest") or (info.get("lineage") or {}).get("params_hash")
    run_id = info.get("run_id")
    if digest is None and run_id and info.get("source") == "mlflow":
        try:
            from mlflow import MlflowClient

            digest = MlflowClient().get_run(run_id).data.params.get("params_digest")
        except Exception:  # metadata is best effort; serving must not fail on it
            digest = None
    return {
        "model_name": info.get("name") or spec.model_name,
        "architecture": spec.model_name,
        "version": str(info.get("version") or "unknown"),
        "run_id": run_id,
        "model_id": info.get("model_id"),
        "model_uri": info.get("uri"),
        "params_hash": digest,
        "dataset": spec.dataset,
        "num_classes": spec.num_classes,
        "image_size": list(spec.image_size),
        "loss": spec.extra.get("loss"),
    }


def create_engine(
    model_uri: str | None = None,
    *,
    bento_dir: str | Path | None = None,
    device: str | None = None,
    backend: str = "torch",
    max_batch_size: int = 8,
    max_wait_ms: float = 2.0,
    observer: Observer | None = None,
    warm_up: bool = True,
    model_process: bool = False,
    threads: int | None = None,
) -> tuple[InferenceEngine, dict[str, Any]]:
    """Load a model, wrap it, warm it up: from `model_uri` (any URI `roadseg.models.io.load_model`
    takes), or else the model packaged in the Bento at `bento_dir` (`roadseg.models.bento`, no
    MLflow). Returns the engine and its metadata; a packaged model's adds `bento_tag`,
    `bento_model` and the MLflow `lineage` labels, so `/metadata` shows where it came from.
    `backend` is what runs the network (`roadseg.serve.backends`): torch on `device` (CUDA
    when available), or onnxruntime on the CPU, over the packaged model.onnx (or
    onnxruntime_int8 over model.int8.onnx: `Int8NotShipped` when it was not packaged); the
    metadata names it (`backend`, `backend_version`), and every response's X-Model-Backend
    (X-Model-Version stays the model's). `model_process` runs the network in a child process
    (`roadseg.serve.modelproc`): a kill of that process mid-batch gives its requests 503 with
    Retry-After, not a reset connection (the metadata says `model_process: true`). `threads`
    is one inference's thread count on either backend (`serve.intra_op_threads`; None: the
    pod's CPU limit), in the metadata as `intra_op_threads`.
    """
    if model_uri is not None:
        from roadseg.models.io import load_model

        model, spec, info = load_model(model_uri)
        extra: dict[str, Any] = {}
    elif bento_dir is not None:
        from roadseg.models.bento import load_packaged_model

        model, spec, info = load_packaged_model(bento_dir=bento_dir)
        extra = {k: info[k] for k in ("bento_tag", "bento_model", "mlflow_version", "lineage")}
    else:
        raise ValueError("create_engine needs a model URI or a Bento directory")
    runs: dict[str, Any] = {"backend": backend}
    onnx_path = onnx_file_for(backend, info)  # int8 not shipped: raises before any child starts
    if backend.startswith("onnxruntime"):
        # CPU only: GPU nodes keep torch unless a CUDA execution provider is measured faster.
        device = "cpu"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model_process:
        net: torch.nn.Module = ModelProcess.start(
            model, spec, backend=backend, onnx_path=onnx_path, device=device, threads=threads
        )
        runs["model_process"] = True
        # This process's torch ops are now the requests' own (resize, upsample, argmax), many
        # threads at once: one intra-op thread each, or every op wakes a pool per thread and
        # the pools oversubscribe the cores (3x the CPU per request, served, on 2 cores).
        torch.set_num_threads(1)
    else:
        net = load_backend(backend, model, spec, onnx_path=onnx_path, threads=threads)
    if backend.startswith("onnxruntime"):
        import onnxruntime

        runs["backend_version"] = f"onnxruntime {onnxruntime.__version__}"
    else:
        runs["backend_version"] = f"torch {torch.__version__}"
    runs["intra_op_threads"] = threads or cpu_limit()
    engine = InferenceEngine(
        net,
        spec,
        info,
        device="cpu" if model_process else device,  # the child moves the batch to `device`
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        observer=observer,
    )
    if warm_up:
        engine.warm_up()
    return engine, model_metadata(spec, info) | extra | runs | {"device": str(engine.device)}
