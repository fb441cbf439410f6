"""The served-equals-evaluated checks of test_service_app.py, against the onnxruntime backend.

The same random checkpoint, served with `serve.backend: onnxruntime` (exported at start-up:
a checkpoint has no packaged model.onnx); every route's pixels must still equal
`roadseg.inference.predict.predict` of the torch model on the same image.
"""

from __future__ import annotations

import pytest

from tests.inprocess import in_process_service
from tests.unit.test_service_app import (  # noqa: F401  (collected here with this `served`)
    KEY,
    H,
    test_concurrent_requests_get_their_own_answers,
    test_json_body_and_multipart_file_give_the_same_answer,
    test_segment_every_format_equals_predict,
    test_segment_json_content,
    test_upload_answers_the_road_probability,
    test_zip_layout_pairs_like_the_streamlit_view_page,
)


@pytest.fixture(scope="module")
def backend() -> str:
    """The backend `served` runs, and the one every reused test expects in X-Model-Backend."""
    return "onnxruntime"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, backend: str):
    tmp = tmp_path_factory.mktemp("svc-onnx")
    edits = {"backend: torch": f"backend: {backend}"}
    with in_process_service(tmp, edits, KEY) as (client, model, spec):
        yield client, model, spec, tmp


def test_metadata_names_the_backend(served) -> None:
    client, *_ = served
    meta = client.get("/metadata", headers=H).json()
    assert meta["backend"] == "onnxruntime" and meta["device"] == "cpu"
    assert meta["backend_version"].startswith("onnxruntime ") and meta["intra_op_threads"] >= 1
    assert meta["model_version"] == "ckpt-epoch3"
