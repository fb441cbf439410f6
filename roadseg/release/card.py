"""A model card for every registered version, written at registration from what the pipeline
knows: intended use and classes, training data, recipe, validation scores (per class, confusion
matrix), known weaknesses (classes under `register.class_iou_floor`), the drift reference and
the lineage. Markdown and a self-contained HTML page (no network, like the other reports), logged
to the version's run under `model_card/` and tagged `model_card` on the version; `roadseg
package` puts it into the Bento, the service answers it at `GET /model-card`::

    roadseg lineage models:/roadseg-unet@champion --card      # print the card's markdown

`build_card` gathers the facts (MLflow reads), `render_markdown`/`render_html` are pure.
"""

from __future__ import annotations

import html
import json
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from roadseg.models.bento import CARD_DIR, CARD_HTML, CARD_MD

CARD_TAG = "model_card"  # version tag: runs:/<run>/model_card/model_card.md
INTENDED_USE = {
    "bdd100k": "Per-pixel classes of forward-facing dash-camera images of road scenes (BDD100k "
    "classes merged into the table below), for driving-scene analysis, data curation and "
    "monitoring. Not certified for vehicle control or any safety-critical decision.",
    "kitti_road": "Road / not-road of each pixel of forward-facing car-camera images (KITTI "
    "Road), for road-area analysis. Not certified for vehicle control or any "
    "safety-critical decision.",
}


@dataclass(frozen=True)
class ModelCard:
    """Everything the card says; rendered by `render_markdown` and `render_html`."""

    model_name: str
    version: str
    dataset: str
    class_names: list[str]
    miou: float
    class_iou: dict[str, float | None]  # None: the class is absent from the validation split
    iou_floor: float
    promotion: str
    lineage: dict[str, str]
    recipe: dict[str, str]
    data: dict[str, str]
    confusion_matrix: list[list[float]] | None = None
    class_shares: dict[str, float] = field(default_factory=dict)
    reference: dict[str, tuple[float, float]] = field(default_factory=dict)  # mean, std
    reference_rows: int = 0
    created: str = ""

    @property
    def weaknesses(self) -> list[str]:
        """Classes under the IoU floor, worst first (and those validation could not measure)."""
        low = sorted(
            (v, n) for n, v in self.class_iou.items() if v is not None and v < self.iou_floor
        )
        out = [f"{n}: IoU {v:.4f} < floor {self.iou_floor:.4f}" for v, n in low]
        absent = [n for n, v in self.class_iou.items() if v is None]
        if absent:
            out.append(f"not measured (absent from the validation split): {', '.join(absent)}")
        return out

    def sections(self) -> list[tuple[str, str | list[list[str]]]]:
        """(heading, text or table rows with a header row), in card order."""
        cm = None
        if self.confusion_matrix:
            names = self.class_names[: len(self.confusion_matrix)]
            cm = [["truth \\ predicted", *names]] + [
                [names[i], *(f"{100 * v / max(sum(row), 1):.1f}%" for v in row)]
                for i, row in enumerate(self.confusion_matrix)
            ]
        ious = [["class", "IoU"]] + [
            [n, "absent" if v is None else f"{v:.4f}"] for n, v in self.class_iou.items()
        ]
        weak = self.weaknesses or [
            f"none: every measured class reaches the floor {self.iou_floor:.4f}"
        ]
        out: list[tuple[str, str | list[list[str]]]] = [
            ("Intended use", INTENDED_USE.get(self.dataset, INTENDED_USE["bdd100k"])),
            ("Classes", [["id", "class"]] + [[str(i), n] for i, n in enumerate(self.class_names)]),
            ("Training data", [["", ""]] + [[k, v] for k, v in self.data.items()]),
        ]
        if self.class_shares:
            out.append(("Class pixel shares (predicted, training sample of the drift reference)",
                        [["class", "share"]] + [[n, f"{v:.3f}"] for n, v in self.class_shares.items()]))  # fmt: skip
        out += [
            ("Training recipe", [["", ""]] + [[k, v] for k, v in self.recipe.items()]),
            ("Validation", f"mIoU {self.miou:.4f}. Promotion: {self.promotion}"),
            ("Validation IoU per class", ious),
        ]
        if cm:
            out.append(("Confusion matrix (validation, rows normalised)", cm))
        out.append(("Known weaknesses", "\n".join(f"- {w}" for w in weak)))
        if self.reference:
            out.append((f"Drift reference ({self.reference_rows} training images)",
                        [["feature", "mean", "std"]] + [[k, f"{m:.4f}", f"{s:.4f}"]
                                                        for k, (m, s) in self.reference.items()]))  # fmt: skip
        out.append(("Lineage", [["", ""]] + [[k, v] for k, v in self.lineage.items()]))
        return out


def render_markdown(card: ModelCard) -> str:
    """The card as markdown."""
    lines = [f"# Model card: {card.model_name} v{card.version}", "", f"Created {card.created}.", ""]
    for heading, body in card.sections():
        lines += [f"## {heading}", ""]
        if isinstance(body, str):
            lines += [body, ""]
            continue
        header, *rows = body
        cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
        lines.append("| " + " | ".join(cell(h) for h in header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


_CSS = """body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#222}table{border-collapse:collapse;margin:.5rem 0 1.5rem}td,th{border:1px solid #ccc;
padding:.25rem .6rem;text-align:left}th{background:#f3f3f3}h2{border-bottom:1px solid #ddd}
li.weak{color:#a40000}"""


def render_html(card: ModelCard) -> str:
    """The card as one self-contained HTML page (inline CSS, no scripts, no remote resource)."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Model card: {e(card.model_name)} v{e(card.version)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Model card: {e(card.model_name)} v{e(card.version)}</h1>",
        f"<p>Created {e(card.created)}.</p>",
    ]
    for heading, body in card.sections():
        parts.append(f"<h2>{e(heading)}</h2>")
        if isinstance(body, str):
            items = [b[2:] for b in body.splitlines() if b.startswith("- ")]
            if items:
                parts.append(
                    "<ul>" + "".join(f'<li class="weak">{e(i)}</li>' for i in items) + "</ul>"
                )
            else:
                parts.append(f"<p>{e(body)}</p>")
            continue
        header, *rows = body
        head = (
            ""
            if not any(header)
            else "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"
        )
        parts.append("<table>" + head + "".join(
            "<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in rows) + "</table>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def _class_iou(per_class: Any, names: Sequence[str]) -> dict[str, float | None]:
    if isinstance(per_class, Mapping):
        return {str(k): float(v) for k, v in per_class.items()}
    out: dict[str, float | None] = {}
    for c in per_class or []:
        present = c.get("present", True) and c.get("iou") is not None
        out[str(c["name"])] = float(c["iou"]) if present else None
    return out or dict.fromkeys(names)


def _run_json(client: Any, run_id: str, path: str, tmp: str) -> dict[str, Any] | None:
    try:
        return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
    except Exception:  # not logged (older runs, the DVC route without evaluation)
        return None


def build_card(
    client: Any,
    *,
    model_name: str,
    version: str,
    run_id: str,
    metrics: Mapping[str, Any],
    tags: Mapping[str, str],
    iou_floor: float,
    promotion: str,
    dataset: str,
    profile: pd.DataFrame | None = None,
    eval_split: str = "val",
) -> ModelCard:
    """The card of a registered version from its run (params, spec, evaluation), its validation
    `metrics` (`segmentation_scores` output), the registry tags and the drift reference profile."""
    run = client.get_run(run_id)
    params, run_tags = run.data.params, run.data.tags
    with tempfile.TemporaryDirectory() as tmp:
        spec = _run_json(client, run_id, "model_spec.json", tmp) or {}
        evaluation = _run_json(client, run_id, f"evaluation/eval_{eval_split}.json", tmp) or {}
    per_class = metrics.get("per_class")
    names = list(spec.get("class_names") or [c["name"] for c in per_class or [] if "name" in c])
    cm = metrics.get("confusion_matrix") or evaluation.get("confusion_matrix")
    shares, reference = {}, {}
    if profile is not None and len(profile):
        numeric = profile.select_dtypes("number")
        shares = {c.removeprefix("share_"): float(numeric[c].mean())
                  for c in numeric.columns if c.startswith("share_")}  # fmt: skip
        reference = {c: (float(numeric[c].mean()), float(numeric[c].std(ddof=0)))
                     for c in numeric.columns if not c.startswith("share_")}  # fmt: skip
    get = lambda d, k: str(d.get(k) or "?")  # noqa: E731
    return ModelCard(
        model_name=model_name,
        version=str(version),
        dataset=dataset,
        class_names=names,
        miou=float(metrics["miou"]),
        class_iou=_class_iou(per_class, names),
        iou_floor=iou_floor,
        promotion=promotion,
        confusion_matrix=cm,
        class_shares=shares,
        reference=reference,
        reference_rows=0 if profile is None else len(profile),
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        data={
            "dataset": dataset,
            "dataset version": get(tags, "dataset_version"),
            "train images": get(params, "num_train"),
            "validation images": get(params, "num_val"),
        },
        recipe={
            "model": spec.get("model_name") or get(run_tags, "roadseg.model"),
            "loss": get(tags, "loss"),
            "epochs": get(params, "train.epochs"),
            "batch size": get(params, "train.batch_size"),
            "learning rate": get(params, "train.lr"),
            "image size": get(params, "train.image_size"),
            "params digest": get(tags, "params_hash"),
            "git commit": get(tags, "git_commit"),
        },
        lineage={
            "pipeline run": get(tags, "pipeline_run_id"),
            "MLflow run": run_id,
            "registered version": f"{model_name} v{version}",
            "Bento": tags.get("bento_tag") or "packaged after registration: `roadseg lineage`",
        },
    )


def log_card(client: Any, card: ModelCard, run_id: str) -> str:
    """Write the card (markdown + HTML) to the run under `model_card/`, tag the version; its URI."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / CARD_DIR
        folder.mkdir()
        (Path(tmp) / CARD_MD).write_text(render_markdown(card))
        (Path(tmp) / CARD_HTML).write_text(render_html(card))
        client.log_artifacts(run_id, str(folder), CARD_DIR)
    uri = f"runs:/{run_id}/{CARD_MD}"
    client.set_model_version_tag(card.model_name, card.version, CARD_TAG, uri)
    return uri


def download_card(client: Any, run_id: str, dst: str | Path) -> Path:
    """The `model_card/` folder of a version's run, downloaded into `dst`."""
    return Path(client.download_artifacts(run_id, CARD_DIR, str(dst)))
