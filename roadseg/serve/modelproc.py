"""The network in a child process of the service worker (`serve.model_process`, on by default).

When the process that runs the network dies mid-batch (killed for memory, a crash in a native
kernel), the HTTP worker lives on: the requests of that batch get 503 with Retry-After (the
engine's `EngineUnavailable`) instead of a reset connection, and the next batch starts a new
child. In one process a kill takes the connections with it: nothing is left to answer them.

    model = ModelProcess.start(torch_model, spec, backend="torch")   # an nn.Module, like the model
    logits = model(batch)           # (N, 3, H, W) float32 -> (N, C, H, W), computed in the child

The child loads the weights the parent has loaded (written once to a private checkpoint, so an
alias moved meanwhile cannot give the child another version), builds the backend and warms up;
then it answers forward requests on a pipe until the pipe closes. Frames are a small header and
the raw float32 array, no pickle. The child ends at end of file on that pipe, which the kernel
closes when the worker dies in any way, SIGKILL included, so it is never left behind. (Not
`PR_SET_PDEATHSIG`: it fires when the *thread* that started the child ends, and the engine may
restart the child from a pool thread.)
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from torch import nn

from roadseg.models.spec import ModelSpec

logger = logging.getLogger(__name__)

# Frame kinds, child -> parent (the parent only sends FORWARD frames).
FORWARD, RESULT, ERROR, READY = 1, 2, 3, 4
HEADER = struct.Struct("<BB")  # kind, ndim (or 0)
DIM = struct.Struct("<I")
START_TIMEOUT_S = 300.0  # a large model on a loaded node: loading + warm-up


class ModelWorkerDied(RuntimeError):
    """The process running the network exited with a batch in it (its requests may be retried)."""


def write_array(out: BinaryIO, kind: int, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.float32)
    out.write(HEADER.pack(kind, array.ndim) + b"".join(DIM.pack(d) for d in array.shape))
    out.write(memoryview(array).cast("B"))
    out.flush()


def write_text(out: BinaryIO, kind: int, text: str) -> None:
    data = text.encode()
    out.write(HEADER.pack(kind, 0) + DIM.pack(len(data)) + data)
    out.flush()


def read_exact(src: BinaryIO, n: int) -> bytearray | None:
    """n bytes (writable: arrays over them need no copy), or None at end of file (the other side
    is gone); a torn frame is end of file too."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = src.readinto(view[got:])
        if not k:
            return None
        got += k
    return buf


def read_frame(src: BinaryIO) -> tuple[int, np.ndarray | str] | None:
    """(kind, array or text) of the next frame; None at end of file."""
    head = read_exact(src, HEADER.size)
    if head is None:
        return None
    kind, ndim = HEADER.unpack(head)
    if kind in (ERROR, READY):
        size = read_exact(src, DIM.size)
        text = None if size is None else read_exact(src, DIM.unpack(size)[0])
        return None if text is None else (kind, text.decode(errors="replace"))
    dims = read_exact(src, DIM.size * ndim)
    if dims is None:
        return None
    shape = tuple(DIM.unpack_from(dims, DIM.size * i)[0] for i in range(ndim))
    data = read_exact(src, 4 * int(np.prod(shape)))
    return None if data is None else (kind, np.frombuffer(data, np.float32).reshape(shape))


def child_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The child's environment: the worker's, with OpenMP's idle threads asleep unless the
    deployment chose otherwise. torch's pool spins between batches by default, and there the
    request threads decode, resize and encode on the same cores (served demo model on 2 cores:
    +16% img/s passive; ONNX Runtime's pool is told the same, `session.intra_op.allow_spinning`)."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} | dict(env)


class ModelProcess(nn.Module):
    """An inference-only `nn.Module` whose forward runs in a child process (see the module).

    Not re-entrant: the engine calls it from its one inference thread (a lock guards anyway).
    A dead child raises `ModelWorkerDied` once, for the batch it held; the next call starts a
    new one (`restarts` counts them).
    """

    def __init__(self, workdir: Path, argv: list[str], *, start_timeout: float = START_TIMEOUT_S):
        super().__init__()
        self.workdir, self.argv, self.start_timeout = workdir, argv, start_timeout
        self.restarts = -1  # the first start is not a restart
        self.proc: subprocess.Popen | None = None
        self.ready = ""
        self._lock = threading.Lock()
        self._spawn()

    @classmethod
    def start(
        cls,
        model: nn.Module,
        spec: ModelSpec,
        *,
        backend: str = "torch",
        onnx_path: str | Path | None = None,
        device: str = "cpu",
        threads: int | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> ModelProcess:
        """A child serving `model` (its weights as loaded here) on `backend`; waits until it has
        loaded and warmed up.

        Raises:
            ModelWorkerDied: the child exited before it was ready (its last words in the message).
        """
        from roadseg.models.io import save_checkpoint, unwrap

        workdir = Path(tempfile.mkdtemp(prefix="roadseg-model-"))
        checkpoint = workdir / "model.pt"
        state = {k: v.cpu() for k, v in unwrap(model).state_dict().items()}
        save_checkpoint(checkpoint, {"model": state, "spec": spec.to_dict()})
        argv = [sys.executable, "-m", "roadseg.serve.modelproc", str(checkpoint),
                "--backend", backend, "--device", str(device)]  # fmt: skip
        if onnx_path is not None:
            argv += ["--onnx", str(onnx_path)]
        if threads is not None:
            argv += ["--threads", str(threads)]
        try:
            return cls(workdir, argv, start_timeout=start_timeout)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def _spawn(self) -> None:
        self.restarts += 1
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=None,  # the child's log lines go where the worker's go
            bufsize=0,
            env=child_env(os.environ),
        )
        timer = threading.Timer(self.start_timeout, self.proc.kill)
        timer.start()
        try:
            frame = read_frame(self.proc.stdout)
        finally:
            timer.cancel()
        if frame is None or frame[0] != READY:
            code = self.proc.wait()
            detail = frame[1] if frame is not None and frame[0] == ERROR else f"exit code {code}"
            self.proc = None
            raise ModelWorkerDied(f"the model process failed to start: {detail}")
        self.ready = frame[1]  # "unet on torch, cpu, threads=2": what the child runs
        logger.info("model process %d ready (%s)", self.proc.pid, self.ready)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                self._spawn()
            proc = self.proc
            try:
                write_array(proc.stdin, FORWARD, x.detach().to("cpu", torch.float32).numpy())
                frame = read_frame(proc.stdout)
            except (BrokenPipeError, ConnectionResetError, ValueError):
                frame = None
            if frame is None:
                code = proc.wait()
                self.proc = None
                raise ModelWorkerDied(
                    f"the model process {proc.pid} exited (code {code}) with this batch in it"
                )
            kind, payload = frame
            if kind == ERROR:
                raise RuntimeError(payload)
            return torch.from_numpy(payload)

    def train(self, mode: bool = True) -> ModelProcess:
        if mode:
            raise RuntimeError("a model process is for inference only")
        return super().train(False)

    def close(self, timeout: float = 5.0) -> None:
        """End the child: end of file on its pipe (it exits), then SIGKILL after `timeout`."""
        with self._lock:
            proc, self.proc = self.proc, None
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close(timeout=1.0)


def serve(checkpoint: Path, backend: str, device: str, onnx: str | None, threads: int | None,
          src: BinaryIO, out: BinaryIO) -> int:  # fmt: skip
    """The child's loop: load, warm up, say READY, then answer FORWARD frames until end of file."""
    from roadseg.inference.predict import forward
    from roadseg.models.io import load_model
    from roadseg.serve.backends import load_backend

    try:
        model, spec, _ = load_model(checkpoint)
        model = load_backend(backend, model, spec, onnx_path=onnx, threads=threads).to(device)
        h, w = spec.image_size
        with torch.inference_mode():
            forward(model, torch.zeros(2, spec.in_channels, h, w), device)
    except Exception as e:  # the parent raises it as the reason the process did not start
        write_text(out, ERROR, f"{type(e).__name__}: {e}")
        return 1
    threads = getattr(model, "threads", None) or torch.get_num_threads()
    write_text(out, READY, f"{spec.model_name} on {backend}, {device}, threads={threads}")
    while (frame := read_frame(src)) is not None:
        try:
            with torch.inference_mode():
                logits = forward(model, torch.from_numpy(frame[1]), device)
            write_array(out, RESULT, logits.numpy())
        except BrokenPipeError:
            return 0
        except Exception as e:  # one bad batch: the parent retries input by input
            write_text(out, ERROR, f"{type(e).__name__}: {e}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--onnx")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s roadseg.model: %(message)s")
    # The frames are the only thing on the real stdout: anything printed goes to stderr.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    src = os.fdopen(0, "rb", buffering=0)
    return serve(args.checkpoint, args.backend, args.device, args.onnx, args.threads, src, out)


if __name__ == "__main__":
    sys.exit(main())
