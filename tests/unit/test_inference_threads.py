"""One inference's threads (`serve.intra_op_threads`, ROADSEG_INTRA_OP_THREADS): the setting is
parsed or refused at start, reaches the backend in the model process and in-process, and is in
the metadata; the model process's idle OpenMP threads sleep (they would spin on the cores the
request threads decode and encode on); the worker's own torch ops run on one thread each."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from roadseg.config import ServeParams
from roadseg.serve.backends import cpu_limit
from roadseg.serve.lifecycle import StartFailure, check_model, threads_setting
from roadseg.serve.modelproc import ModelProcess, child_env
from roadseg.testing import random_unet, save_random_checkpoint


def test_the_variable_overrides_the_params_and_bad_values_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("ROADSEG_INTRA_OP_THREADS", raising=False)
    assert threads_setting(None) is None and threads_setting(3) == 3
    monkeypatch.setenv("ROADSEG_INTRA_OP_THREADS", "2")
    assert threads_setting(None) == 2 and threads_setting(3) == 2
    for bad in ("0", "-1", "two", "1.5"):
        monkeypatch.setenv("ROADSEG_INTRA_OP_THREADS", bad)
        with pytest.raises(ValueError, match=rf"ROADSEG_INTRA_OP_THREADS='{bad}' is not a whole"):
            threads_setting(4)
    with pytest.raises(ValidationError, match="intra_op_threads"):
        ServeParams(intra_op_threads=0)


def test_a_bad_thread_count_fails_the_start_with_one_line(tmp_path: Path, monkeypatch) -> None:
    ckpt = tmp_path / "model.pt"
    save_random_checkpoint(ckpt, base_channels=4)
    monkeypatch.setenv("ROADSEG_MODEL_URI", str(ckpt))
    monkeypatch.setenv("ROADSEG_TERMINATION_LOG", str(tmp_path / "termination-log"))
    monkeypatch.setenv("ROADSEG_INTRA_OP_THREADS", "all")
    with pytest.raises(StartFailure) as e:
        check_model(tmp_path / "service.py")
    assert str(e.value) == (
        f"roadseg: cannot serve {ckpt}: ROADSEG_INTRA_OP_THREADS='all' is not a whole number "
        "of at least 1"
    )
    monkeypatch.setenv("ROADSEG_INTRA_OP_THREADS", "1")
    assert check_model(tmp_path / "service.py")["model_name"] == "unet"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(kv.split("=", 1) for kv in raw.split("\0") if "=" in kv)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_model_process_runs_the_threads_it_is_given(backend: str, monkeypatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    model, spec = random_unet(base_channels=4, seed=0)
    for threads in (1, 2):
        proc = ModelProcess.start(model, spec, backend=backend, threads=threads)
        try:
            assert proc.ready == f"unet on {backend}, cpu, threads={threads}"
            assert _environ(proc.pid)["OMP_WAIT_POLICY"] == "PASSIVE"
        finally:
            proc.close()
    proc = ModelProcess.start(model, spec, backend=backend)  # unset: the pod's CPU limit
    try:
        assert proc.ready.endswith(f"threads={cpu_limit()}")
    finally:
        proc.close()


def test_a_deployment_s_own_wait_policy_is_kept() -> None:
    assert child_env({"OMP_WAIT_POLICY": "ACTIVE", "A": "1"}) == {"OMP_WAIT_POLICY": "ACTIVE",
                                                                  "A": "1"}  # fmt: skip
    assert child_env({"A": "1"}) == {"OMP_WAIT_POLICY": "PASSIVE", "A": "1"}


@pytest.mark.parametrize("model_process", [True, False])
def test_engine_threads_in_metadata_and_in_this_process(tmp_path, model_process) -> None:
    import asyncio

    from roadseg.serve.engine import create_engine

    ckpt = tmp_path / "model.pt"
    save_random_checkpoint(ckpt, base_channels=4, seed=0)
    torch.set_num_threads(2)
    engine, meta = create_engine(str(ckpt), backend="torch", model_process=model_process,
                                 threads=1, warm_up=False)  # fmt: skip
    try:
        assert meta["intra_op_threads"] == 1
        if model_process:
            assert engine.model.ready.endswith("threads=1")
        # beside a model process the request threads' own ops run one thread each; in-process
        # the network's pool is this process's, set to the setting
        assert torch.get_num_threads() == 1
    finally:
        asyncio.run(engine.close())
    _, meta = create_engine(str(ckpt), backend="torch", warm_up=False)
    assert meta["intra_op_threads"] == cpu_limit() and torch.get_num_threads() == cpu_limit()
