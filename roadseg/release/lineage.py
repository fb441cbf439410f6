"""Where a served model came from, in one table: KFP run → MLflow run → registry version → Bento
→ image → where it is deployed::

    roadseg lineage models:/roadseg-unet@champion
    roadseg lineage roadseg:pqm6nbxgs2fg2ax4        # a Bento tag (read from the local store)

The chain is read from the tags the pipeline writes on the MLflow model version
(`pipeline_run_id`, `bento_tag`, `deployed_image`, `deployed_at`, `deployed_to`, `deploy`,
`model_card`); `roadseg lineage REF --card` prints the version's model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from roadseg.release.packaging import resolve_version


def version_uri_of_bento(bento_tag: str) -> str:
    """`models:/name/version` of the model a local Bento was packaged from (its labels)."""
    import bentoml

    labels = bentoml.bentos.get(bento_tag).info.labels
    if "mlflow_model" not in labels or "mlflow_version" not in labels:
        raise ValueError(f"Bento {bento_tag} was not built by `roadseg package` (no MLflow labels)")
    return f"models:/{labels['mlflow_model']}/{labels['mlflow_version']}"


def lineage_rows(ref: str, *, tracking_uri: str) -> list[tuple[str, str]]:
    """(stage, value) from the pipeline run to the deployment, for a models:/ URI or Bento tag."""
    uri = ref if ref.startswith("models:/") else version_uri_of_bento(ref)
    v = resolve_version(uri, tracking_uri=tracking_uri)
    tags: dict[str, Any] = v.tags
    if tags.get("deploy") == "failed":
        deployed = f"failed: {tags.get('deploy_failure_reason', '?')}"
    elif "deployed_to" in tags:
        deployed = f"{tags['deployed_to']} since {tags.get('deployed_at', '?')}"
    else:
        deployed = "not deployed"
    return [
        ("KFP run", tags.get("pipeline_run_id", "-")),
        ("MLflow run", v.run_id),
        ("registry version", f"{v.name} v{v.version}"),
        ("Bento", tags.get("bento_tag", "not packaged")),
        ("image", tags.get("deployed_image", "-")),
        ("deployed", deployed),
        ("model card", tags.get("model_card", "none (registered before cards)")),
    ]


def card_markdown(ref: str, *, tracking_uri: str) -> str:
    """The model card (markdown) of a models:/ URI or Bento tag's registered version."""
    import tempfile

    from mlflow import MlflowClient

    from roadseg.models.bento import CARD_MD
    from roadseg.release.card import CARD_TAG

    uri = ref if ref.startswith("models:/") else version_uri_of_bento(ref)
    v = resolve_version(uri, tracking_uri=tracking_uri)
    if CARD_TAG not in v.tags:
        raise FileNotFoundError(f"{v.name} v{v.version} has no model card")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(v.run_id, CARD_MD, tmp)).read_text()
