"""Shadow evidence on a registered version: what the service's shadow challenger measured.

The serving side (`roadseg.serve.shadow`) writes it, the promotion gate (`roadseg.release.promote`)
reads it; the tag format lives here, once. Every serving worker (pod and process) that shadows a
version keeps its own cumulative summary in one tag, `shadow.src.<source>` (JSON: images,
agreement, dropped, champion, updated), so workers never overwrite each other's counts; the
aggregate over all sources is written beside them for people (`shadow.images`,
`shadow.agreement`, `shadow.dropped`, `shadow.updated_at`) and recomputed by the gate from the
per-source tags, which are the evidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SOURCE_PREFIX = "shadow.src."
IMAGES_TAG = "shadow.images"
AGREEMENT_TAG = "shadow.agreement"
DROPPED_TAG = "shadow.dropped"
UPDATED_TAG = "shadow.updated_at"


@dataclass(frozen=True)
class ShadowEvidence:
    """Images shadowed, their mean pixel agreement with the champion, images dropped, and the
    per-source summaries it was summed from."""

    images: int = 0
    agreement: float | None = None
    dropped: int = 0
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


def source_name(text: str) -> str:
    """A tag-safe, bounded name for one serving worker (pod name and process id)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:120] or "unknown"


def combine(summaries: Mapping[str, Mapping[str, Any]]) -> ShadowEvidence:
    """The images-weighted agreement over every source's summary."""
    images = sum(int(s.get("images") or 0) for s in summaries.values())
    dropped = sum(int(s.get("dropped") or 0) for s in summaries.values())
    weighted = sum(
        int(s.get("images") or 0) * float(s["agreement"])
        for s in summaries.values()
        if s.get("agreement") is not None
    )
    return ShadowEvidence(
        images=images,
        agreement=weighted / images if images else None,
        dropped=dropped,
        sources={k: dict(v) for k, v in summaries.items()},
    )


def read_evidence(tags: Mapping[str, str]) -> ShadowEvidence:
    """The shadow evidence in a version's tags: the per-source summaries when there are any
    (unreadable ones are skipped), else the aggregate tags, else none."""
    summaries = {}
    for key, value in tags.items():
        if key.startswith(SOURCE_PREFIX):
            try:
                summary = json.loads(value)
            except ValueError:
                continue
            if isinstance(summary, dict):
                summaries[key.removeprefix(SOURCE_PREFIX)] = summary
    if summaries:
        return combine(summaries)
    try:
        images = int(tags.get(IMAGES_TAG) or 0)
        agreement = float(tags[AGREEMENT_TAG]) if tags.get(AGREEMENT_TAG) else None
        dropped = int(tags.get(DROPPED_TAG) or 0)
    except ValueError:
        return ShadowEvidence()
    return ShadowEvidence(images=images, agreement=agreement if images else None, dropped=dropped)


def record_summary(
    client: Any, name: str, version: str, source: str, summary: Mapping[str, Any]
) -> ShadowEvidence:
    """Write one source's cumulative summary on the version, then the aggregate over every source
    now on it (read back, so the counts of other workers are kept). Returns the aggregate."""
    updated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    payload = {**summary, "updated": updated}
    client.set_model_version_tag(
        name, version, SOURCE_PREFIX + source_name(source), json.dumps(payload, sort_keys=True)
    )
    tags = dict(client.get_model_version(name, version).tags)
    evidence = read_evidence(tags)
    client.set_model_version_tag(name, version, IMAGES_TAG, str(evidence.images))
    if evidence.agreement is not None:
        client.set_model_version_tag(name, version, AGREEMENT_TAG, f"{evidence.agreement:.6f}")
    client.set_model_version_tag(name, version, DROPPED_TAG, str(evidence.dropped))
    client.set_model_version_tag(name, version, UPDATED_TAG, updated)
    return evidence
