"""The single entry point: `roadseg <command>`. DVC stages, KFP components and the Makefile call it.

Every command takes `--params FILE` and repeated `--set dotted.key=value` overrides, and stays a
few lines: load params, call one library function, report. One module per command group:

| module | commands |
|---|---|
| `data` | `data import/synth/validate/remap`, `demo`, `params` |
| `train` | `train`, `evaluate` |
| `pipeline` | `pipeline compile/run/submit`, `register`, `runs compare` |
| `serve` | `serve`, `stream`, `package`, `build-context`, `lineage` |
| `drift` | `drift` |
| `promote` | `promote` |
| `follow` | `follow` |

Shared options and helpers are in `common`.
"""

import importlib

from roadseg.cli.common import app

# Importing a group module registers its commands; this order is the order of `roadseg --help`.
for _group in ("data", "train", "pipeline", "serve", "drift", "promote", "follow"):
    importlib.import_module(f"roadseg.cli.{_group}")

__all__ = ["app"]
