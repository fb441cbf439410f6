"""Label validation: a Great Expectations 1.x suite over the per-file table of a dataset.

    roadseg data validate --data-dir data/bdd100k --report-dir reports/validation

Each rule is one or two expectations over columns of `roadseg.data.inventory.build_file_table`;
results are requested with `result_format=COMPLETE` keyed by the table's `row` column, so every
offending row is mapped back to its file and rule (one bad file never hides another). Writes GX
Data Docs (HTML) and `validation_summary.json` into the report directory.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from roadseg.config import DataParams
from roadseg.data import bdd100k
from roadseg.data.inventory import build_file_table
from roadseg.data.kitti_checks import (
    KITTI_RULES,
    build_kitti_table,
    kitti_detail,
    kitti_expectations,
)

SUITE_NAME = "roadseg-labels"
DOCS_SITE = "roadseg"
SUMMARY_FILE = "validation_summary.json"
TABLE_FILE = "file_table.csv"
DOCS_DIR = "data_docs"

# rule -> what it means (shown in Data Docs, the summary and the CLI)
RULES = {
    "split_present": "a requested split exists in the data directory",
    "split_not_empty": "a split holds at least one file",
    "mask_present": "every image of a labelled split has a mask",
    "image_present": "every mask has an image (no orphan masks)",
    "no_zero_byte_files": "no image or mask is an empty file",
    "image_decodes": "every image decodes completely (not corrupt or truncated)",
    "mask_decodes": "every mask decodes completely",
    "mask_single_channel_8bit": "masks are single-channel 8-bit (PIL mode L or P)",
    "mask_ids_valid": "mask ids lie in 0-18 or the ignore index",
    "sizes_agree": "image and mask have the same width and height",
    "mask_not_all_ignore": "no mask is entirely (or above the allowed fraction) ignore",
    "name_unique_across_splits": "no file name appears in two splits",
}


class Failure(NamedTuple):
    """One offending file and the rule it broke."""

    split: str
    file: str
    rule: str
    detail: str


@dataclass
class ValidationResult:
    success: bool
    n_files: int
    failures: list[Failure] = field(default_factory=list)
    data_docs_path: Path | None = None
    summary_path: Path | None = None
    missing_splits: list[str] = field(default_factory=list)
    seconds: float = 0.0


class DatasetError(ValueError):
    """The input cannot be validated at all (missing or empty directory, unknown split)."""


def _expectations(gxe, max_ignore_fraction: float, dataset: str = "bdd100k") -> list:
    """The suite, one entry per (rule, expectation); `meta.rule` maps results back to rules.

    The file-level rules (pairing, non-empty, decodable, sizes, not all ignore) are shared by
    both layouts; BDD100k adds mask format and ids, KITTI Road its colours, categories, names.
    """

    def tag(rule: str) -> dict:
        return {"meta": {"rule": rule}, "notes": {**RULES, **KITTI_RULES}[rule]}

    def in_set(rule: str, column: str, values: list) -> object:
        return gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values, **tag(rule))

    kitti = dataset == "kitti_road"
    label = "gt" if kitti else "mask"
    shared = [
        in_set(f"{label}_present", "label_paired", [True]),
        in_set("image_present", "has_image", [True]),
        gxe.ExpectColumnValuesToBeBetween(
            column="image_bytes", min_value=1, **tag("no_zero_byte_files")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="label_bytes", min_value=1, **tag("no_zero_byte_files")
        ),
        in_set("image_decodes", "image_decodes", [True]),
        in_set(f"{label}_decodes", "label_decodes", [True]),
        gxe.ExpectColumnPairValuesToBeEqual(
            column_A="image_size",
            column_B="label_size",
            ignore_row_if="either_value_is_missing",
            **tag("sizes_agree"),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="ignore_fraction",
            max_value=max_ignore_fraction,
            strict_max=True,
            **tag("gt_not_all_void" if kitti else "mask_not_all_ignore"),
        ),
    ]
    if kitti:
        return [*shared, *kitti_expectations(gxe, in_set, tag)]
    return [
        *shared,
        in_set("mask_single_channel_8bit", "label_mode", ["L", "P"]),
        in_set("mask_ids_valid", "label_ids_valid", [True]),
        in_set("name_unique_across_splits", "in_other_split", [False]),
    ]


def _detail(rule: str, row: pd.Series, max_ignore_fraction: float) -> tuple[str, str]:
    """(file to name, human-readable detail) for a row that broke `rule`."""
    image, label = row["image_path"], row["label_path"]
    if rule == "mask_present":
        return image, "no mask with this name"
    if rule == "image_present":
        return label, "orphan mask: no image with this name"
    if rule == "no_zero_byte_files":
        return (
            (image, "image is 0 bytes") if row["image_bytes"] == 0 else (label, "mask is 0 bytes")
        )
    if rule == "image_decodes":
        return image, f"cannot decode image: {row['image_error']}"
    if rule == "mask_decodes":
        return label, f"cannot decode mask: {row['label_error']}"
    if rule == "mask_single_channel_8bit":
        return (
            label,
            f"mode {row['label_mode']} ({int(row['label_channels'])} channel(s), {row['label_dtype']})",
        )
    if rule == "mask_ids_valid":
        return label, f"ids outside 0-18/ignore: {row['bad_ids']}"
    if rule == "sizes_agree":
        return label, f"image {row['image_size']} vs mask {row['label_size']}"
    if rule == "mask_not_all_ignore":
        limit = (
            "entirely ignore"
            if max_ignore_fraction >= 1.0
            else f"ignore fraction >= {max_ignore_fraction}"
        )
        return label, f"{limit} ({row['ignore_fraction']:.3f})"
    if rule == "name_unique_across_splits":
        return image or label, f"name also in split(s): {row['other_splits']}"
    return image or label, rule


def _run_suite(
    table: pd.DataFrame, docs_dir: Path, max_ignore_fraction: float, dataset: str = "bdd100k"
) -> tuple[list[Failure], Path]:
    """Run the GX checkpoint over `table`; return failures per file and the Data Docs index."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    # Old runs would otherwise linger in the site; the folder is ours alone.
    shutil.rmtree(docs_dir, ignore_errors=True)
    site = {
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),
        },
    }
    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        data_docs_sites={DOCS_SITE: site},
        analytics_enabled=False,  # no network calls from a validation step
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(project_config=config, mode="ephemeral")
    batch = context.data_sources.add_pandas("roadseg").add_dataframe_asset("files")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for expectation in _expectations(gxe, max_ignore_fraction, dataset):
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(
            name="labels", data=batch.add_batch_definition_whole_dataframe("table"), suite=suite
        )
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="roadseg-labels",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={
                "result_format": "COMPLETE",
                "unexpected_index_column_names": ["row", "key"],
            },
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": table})
    failures = _failures(outcome, table, max_ignore_fraction, dataset)
    from roadseg.reports import make_offline_tree

    make_offline_tree(docs_dir)  # Data Docs load their CDN assets: inline them (no network)
    return failures, docs_dir / "index.html"


def _failures(
    outcome: Any, table: pd.DataFrame, max_ignore_fraction: float, dataset: str
) -> list[Failure]:
    """One `Failure` per file and broken rule, from a GX checkpoint result over `table`."""
    failures: list[Failure] = []
    by_row = table.set_index("row", drop=False)
    for run in outcome.run_results.values():
        for res in run.results:
            if res.success:
                continue
            rule = res.expectation_config.meta.get("rule", res.expectation_config.type)
            if res.exception_info and res.exception_info.get("raised_exception"):
                msg = res.exception_info.get("exception_message")
                failures.append(Failure("*", "*", rule, f"expectation could not run: {msg}"))
                continue
            if "partial_missing_list" in res.result:  # a whole-table rule (KITTI categories)
                missing = res.result["partial_missing_list"]
                failures.append(
                    Failure("training", "training/image_2", rule, f"missing: {missing}")
                )
                continue
            for hit in res.result.get("unexpected_index_list") or []:
                row = by_row.loc[int(hit["row"])]
                file, detail = (
                    kitti_detail(rule, row)
                    if dataset == "kitti_road"
                    else _detail(rule, row, max_ignore_fraction)
                )
                failures.append(Failure(row["split"], file, rule, detail))
    return failures


def _resolve(root: Path, splits: Iterable[str] | None) -> tuple[list[str], list[str]]:
    if not root.exists():
        raise DatasetError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"data directory {root} is not a directory")
    try:
        present, missing = bdd100k.resolve_splits(root, list(splits) if splits else None)
    except ValueError as e:
        raise DatasetError(str(e)) from None
    if not present and not missing:
        raise DatasetError(
            f"no dataset found in {root}: expected {bdd100k.IMAGE_DIR}/<split> or {bdd100k.MASK_DIR}/<split> "
            f"for a split in {list(bdd100k.SPLITS)}"
        )
    return present, missing


def validate_dataset(
    data_dir: Path | str,
    data_params: DataParams,
    *,
    splits: Iterable[str] | None = None,
    report_dir: Path | str,
    max_ignore_fraction: float = 1.0,
    workers: int | None = None,
    progress: bool | None = None,
) -> ValidationResult:
    """Validate the images and labels of a BDD100k-layout dataset and write reports.

    Args:
        data_dir: dataset root.
        data_params: `params.data`.
        splits: splits to validate (default: all present). Requested splits that are missing are
            reported as `split_present` failures.
        report_dir: receives `data_docs/index.html`, `validation_summary.json` and `file_table.csv`.
        max_ignore_fraction: a mask's ignore fraction must stay strictly below this.
        workers: worker processes for decoding (default `data_params.num_workers`).
        progress: tqdm bar while inspecting files (default: for large sets).

    Raises:
        DatasetError: the directory is missing, holds no split, or a split name is unknown.
    """
    start = time.perf_counter()
    root, report = Path(data_dir), Path(report_dir)
    if data_params.dataset == "kitti_road":
        return _validate_kitti(root, data_params, report, max_ignore_fraction, workers, progress)
    present, missing = _resolve(root, splits)
    table = build_file_table(root, data_params, present, workers=workers, progress=progress)

    failures = [
        Failure(s, (bdd100k.IMAGE_DIR / s).as_posix(), "split_present", "split not found")
        for s in missing
    ]
    counts = table["split"].value_counts()
    failures += [
        Failure(s, (bdd100k.IMAGE_DIR / s).as_posix(), "split_not_empty", "no images or masks")
        for s in present
        if not counts.get(s)
    ]
    report.mkdir(parents=True, exist_ok=True)
    table.to_csv(report / TABLE_FILE, index=False)
    suite_failures, docs_index = _run_suite(table, report / DOCS_DIR, max_ignore_fraction)
    failures += sorted(suite_failures, key=lambda f: (f.split, f.file, f.rule))

    result = ValidationResult(
        success=not failures,
        n_files=len(table),
        failures=failures,
        data_docs_path=docs_index,
        summary_path=report / SUMMARY_FILE,
        missing_splits=missing,
        seconds=time.perf_counter() - start,
    )
    _write_summary(result, root, present, table)
    return result


def _validate_kitti(
    root: Path,
    data_params: DataParams,
    report: Path,
    max_ignore_fraction: float,
    workers: int | None,
    progress: bool | None,
) -> ValidationResult:
    """`validate_dataset` for the KITTI Road layout (rules: `KITTI_RULES`)."""
    from roadseg.data.kitti import kitti_root

    start, root = time.perf_counter(), kitti_root(root)
    if not (root / "training").is_dir() and not (root / "testing").is_dir():
        raise DatasetError(
            f"no KITTI Road dataset in {root}: expected training/image_2 and "
            "training/gt_image_2 (and optionally testing/image_2)"
        )
    n_workers = workers if workers is not None else data_params.num_workers
    table = build_kitti_table(root, workers=n_workers, progress=progress)
    failures = []
    if not (table["split"] != "test").any():
        failures.append(
            Failure("training", "training/image_2", "split_not_empty", "no training images")
        )
    report.mkdir(parents=True, exist_ok=True)
    table.to_csv(report / TABLE_FILE, index=False)
    suite_failures, docs_index = _run_suite(
        table, report / DOCS_DIR, max_ignore_fraction, "kitti_road"
    )
    failures += sorted(suite_failures, key=lambda f: (f.split, f.file, f.rule))
    result = ValidationResult(
        success=not failures, n_files=len(table), failures=failures,
        data_docs_path=docs_index, summary_path=report / SUMMARY_FILE,
        seconds=time.perf_counter() - start,
    )  # fmt: skip
    splits = [s for s in ("train", "val", "test") if (table["split"] == s).any()]
    _write_summary(result, root, splits, table, KITTI_RULES)
    return result


def _write_summary(
    result: ValidationResult,
    root: Path,
    splits: list[str],
    table: pd.DataFrame,
    rules: dict[str, str] = RULES,
) -> None:
    per_rule = {rule: sum(f.rule == rule for f in result.failures) for rule in rules}
    summary = {
        "success": result.success,
        "data_dir": str(root),
        "splits": splits,
        "missing_splits": result.missing_splits,
        "n_files": result.n_files,
        "files_per_split": {s: int((table["split"] == s).sum()) for s in splits},
        "n_failures": len(result.failures),
        "failures_per_rule": per_rule,
        "rules": rules,
        "failures": [f._asdict() for f in result.failures],
        "data_docs": str(result.data_docs_path),
        "seconds": round(result.seconds, 3),
    }
    result.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
