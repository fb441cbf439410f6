"""`--set dotted.key=value` overrides of the raw params (roadseg/config.py validates the result).

    apply_overrides({"train": {"epochs": 10}}, ["train.epochs=2"])  # {"train": {"epochs": 2}}

Values are YAML (`train.image_size=[128,224]`, `train.init_from=null`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import yaml


class ParamsError(ValueError):
    """Params that cannot be loaded: a bad file, an unknown key or an invalid value."""


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"override {item!r} is not of the form dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ParamsError(f"override {item!r}: value is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(
    raw: dict[str, Any],
    overrides: list[str] | tuple[str, ...],
    *,
    optional_leaf: Callable[[list[str]], bool] = lambda path: False,
) -> dict[str, Any]:
    """Set dotted keys in a copy of the raw params dict; a key that does not exist is an error,
    unless `optional_leaf(path)` says the typed params define it with a default."""
    out = json.loads(json.dumps(raw))  # deep copy of plain YAML data
    for item in overrides:
        path, value = parse_override(item)
        node: Any = out
        for i, part in enumerate(path):
            dotted = ".".join(path[: i + 1])
            if isinstance(node, dict) and node and all(isinstance(k, int) for k in node):
                part = int(part) if part.lstrip("-").isdigit() else part  # type: ignore[assignment]
            if not isinstance(node, dict) or part not in node:
                if i == len(path) - 1 and isinstance(node, dict) and optional_leaf(path):
                    break
                raise ParamsError(f"unknown params key {dotted!r} (in override {item!r})")
            if i < len(path) - 1:
                node = node[part]
        node[part] = value
    return out
