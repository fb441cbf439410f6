"""Drift that acts without churning: whether a drift check starts the training pipeline.

`roadseg drift --on-drift retrain` (or `drift.on_drift: retrain`) starts one pipeline run when
served traffic drifted *and* there is something new to learn: a dataset version other than the
champion's `dataset_version` (and other than the one a drift run was already started for).
Otherwise it records "drift, no new labelled data since <version>" on the champion and starts
nothing. One drift episode (consecutive drifted checks; a check without drift closes it) starts
at most one run, and after a start no other for `drift.cooldown_hours`, so an hourly job over a
lasting drift never starts a run an hour::

    roadseg drift --reference models:/roadseg-unet@champion --current monitoring/ \\
        --out reports/drift --on-drift retrain --data-dir data/bdd100k

The state is MLflow tags on the champion version (`EpisodeState`); `decide` is a pure function
of it, and `act_on_drift` reads the tags, decides, writes the tags and calls the injected
`start_run` (the CLI passes `pipeline run --local` or a `kfp.Client` submission).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

# Tags on the champion model version.
EPISODE_TAG = "drift_episode"  # id of the open drift episode ("" once a check saw no drift)
LAST_CHECK_TAG = "drift_last_check"  # unix time of the last check
DECISION_TAG = "drift_decision"  # the last decision, one line
RETRAIN_EPISODE_TAG = "retrain_episode"  # the episode that started the last run
RETRAIN_AT_TAG = "retrain_started_at"  # unix time the last run was started
RETRAIN_DATA_TAG = "retrain_dataset_version"  # the dataset version it was started for
RETRAIN_RUN_TAG = "retrain_run"  # what the start returned (KFP run id, registered version)
DATASET_TAG = "dataset_version"  # written by the registry step
REPORT_ARTIFACT_DIR = "drift"  # drift/<timestamp>/ in the served version's run

Action = Literal["none", "alert", "started", "no_new_data", "cooldown", "episode_started"]


@dataclass(frozen=True)
class EpisodeState:
    """What the champion version's tags say about past drift checks and drift-started runs."""

    episode: str = ""
    retrain_episode: str = ""
    retrain_started_at: float | None = None
    retrain_dataset_version: str = ""
    champion_dataset_version: str = ""

    @classmethod
    def from_tags(cls, tags: Mapping[str, str], params: Mapping[str, str] | None = None) -> (
        EpisodeState
    ):  # fmt: skip
        """From the version's tags (the run's `dataset_version` param when the tag is missing)."""
        started = tags.get(RETRAIN_AT_TAG, "")
        return cls(
            episode=tags.get(EPISODE_TAG, ""),
            retrain_episode=tags.get(RETRAIN_EPISODE_TAG, ""),
            retrain_started_at=float(started) if started else None,
            retrain_dataset_version=tags.get(RETRAIN_DATA_TAG, ""),
            champion_dataset_version=tags.get(DATASET_TAG) or (params or {}).get(DATASET_TAG, ""),
        )


@dataclass(frozen=True)
class Decision:
    """What a drift check does: `action`, the reason in one line, the tags to write."""

    action: Action
    reason: str
    episode: str
    tags: dict[str, str]

    @property
    def start(self) -> bool:
        return self.action == "started"


def episode_id(now: float) -> str:
    """A new episode's id: when it began, UTC (`drift-20261203T120000Z`)."""
    return "drift-" + timestamp(now)


def timestamp(now: float) -> str:
    """`20261203T120000Z`: sortable, and safe in an artifact path."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")


def has_new_data(current: Sequence[str], state: EpisodeState) -> bool:
    """A dataset version the champion was not trained on and no drift run was started for.

    `current` names the current dataset, in every spelling it may have been recorded in (a
    DVC-tracked folder is `dvc:<md5>` to `roadseg register`, `sha256:<hash>` to the pipeline,
    which hashes its own copy). Versions are hashes, not ordered: "newer" means "none of them
    is the champion's or the last drift-started run's"; no version known means no new data.
    """
    seen = {state.champion_dataset_version, state.retrain_dataset_version} - {""}
    return bool(current) and not seen.intersection(current)


def local_dataset_versions(data_dir: str | Path) -> tuple[str, ...]:
    """The versions a local dataset folder may be registered under (`has_new_data`)."""
    from roadseg.tracking import content_hash, dataset_version

    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset directory not found: {folder}")
    return tuple(dict.fromkeys([dataset_version(folder), f"sha256:{content_hash(folder)}"]))


def in_cooldown(state: EpisodeState, now: float, cooldown_hours: float) -> bool:
    """A drift-started run began less than `cooldown_hours` ago."""
    if state.retrain_started_at is None:
        return False
    return now - state.retrain_started_at < cooldown_hours * 3600


def current_episode(state: EpisodeState, drifted: bool, now: float) -> str:
    """The open episode continues while checks drift; a drifted check after a clean one opens a
    new one; a clean check has none."""
    if not drifted:
        return ""
    return state.episode or episode_id(now)


def decide(
    drifted: bool,
    state: EpisodeState,
    *,
    current_dataset: Sequence[str],
    on_drift: str,
    cooldown_hours: float,
    now: float,
) -> Decision:
    """The action of one drift check, and the champion tags recording it (pure)."""
    episode = current_episode(state, drifted, now)
    tags = {EPISODE_TAG: episode, LAST_CHECK_TAG: f"{now:.0f}"}

    def done(action: Action, reason: str, **extra: str) -> Decision:
        return Decision(action, reason, episode, tags | {DECISION_TAG: reason} | extra)

    since = state.champion_dataset_version or "unknown"
    if not drifted:
        return done("none", "no drift")
    if on_drift != "retrain":
        return done("alert", f"drift ({episode}); drift.on_drift=alert: alert only, no run")
    if state.retrain_episode == episode:
        return done("episode_started", f"drift ({episode}) already started a run")
    if in_cooldown(state, now, cooldown_hours):
        ago = (now - (state.retrain_started_at or now)) / 3600
        return done("cooldown", f"drift ({episode}); a run started {ago:.1f} h ago, cooldown "
                                f"{cooldown_hours:g} h: no run")  # fmt: skip
    if not has_new_data(current_dataset, state):
        return done("no_new_data", f"drift, no new labelled data since {since}")
    return done(
        "started",
        f"drift ({episode}), new data {current_dataset[0]} (champion: {since}): training started",
        **{RETRAIN_EPISODE_TAG: episode, RETRAIN_AT_TAG: f"{now:.0f}",
           RETRAIN_DATA_TAG: current_dataset[0]},
    )  # fmt: skip


def act_on_drift(
    client: Any,
    model_name: str,
    version: str,
    *,
    drifted: bool,
    current_dataset: Sequence[str],
    on_drift: str,
    cooldown_hours: float,
    start_run: Callable[[], Mapping[str, Any]] | None,
    now: float | None = None,
) -> Decision:
    """Decide for the served version `model_name/version`, record it on its tags, and start the
    pipeline when the decision says so.

    The start is claimed on the tags before `start_run` is called (a local run takes hours and
    the next hourly check must see it). A start that raises keeps the cooldown but frees the
    episode, so a later check (after the cooldown) tries again; the error is re-raised.
    """
    now = time.time() if now is None else now
    mv = client.get_model_version(model_name, version)
    params = client.get_run(mv.run_id).data.params if mv.run_id else {}
    state = EpisodeState.from_tags(mv.tags, params)
    decision = decide(drifted, state, current_dataset=current_dataset, on_drift=on_drift,
                      cooldown_hours=cooldown_hours, now=now)  # fmt: skip
    _set_tags(client, model_name, version, decision.tags)
    log.info("%s v%s: %s", model_name, version, decision.reason)
    if not decision.start:
        return decision
    if start_run is None:
        raise ValueError("drift.on_drift=retrain needs a way to start the pipeline")
    try:
        started = dict(start_run())
    except Exception as e:
        _set_tags(client, model_name, version, {
            RETRAIN_EPISODE_TAG: "", DECISION_TAG: f"drift ({decision.episode}): the run did not "
            f"start: {type(e).__name__}: {str(e)[:300]}"})  # fmt: skip
        raise
    what = ", ".join(f"{k}={v}" for k, v in sorted(started.items()) if v not in (None, ""))
    _set_tags(client, model_name, version, {RETRAIN_RUN_TAG: what[:5000]})
    return Decision(decision.action, f"{decision.reason} ({what})", decision.episode,
                    decision.tags | {RETRAIN_RUN_TAG: what})  # fmt: skip


def log_report(client: Any, run_id: str, out_dir: str | Path, now: float) -> str:
    """Log the report (`drift_report.html`, `drift_summary.json`) to the served version's run
    under `drift/<timestamp>/`; returns that artifact path."""
    out = Path(out_dir)
    path = f"{REPORT_ARTIFACT_DIR}/{timestamp(now)}"
    for name in ("drift_report.html", "drift_summary.json"):
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name), path)
    return path


def _set_tags(client: Any, name: str, version: str, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def served_version(client: Any, reference: str) -> Any:
    """The registered version behind `models:/name@alias` or `models:/name/N`."""
    rest = reference.removeprefix("models:/") if reference.startswith("models:/") else ""
    name, sep, which = rest.partition("@") if "@" in rest else rest.partition("/")
    if not (name and sep and which):
        raise ValueError(f"{reference!r}: expected models:/name@alias or models:/name/version")
    if which.isdigit():
        return client.get_model_version(name, which)
    return client.get_model_version_by_alias(name, which)


def follow_drift(
    reference: str,
    out_dir: str | Path,
    *,
    drifted: bool,
    tracking_uri: str,
    on_drift: str,
    cooldown_hours: float,
    current_dataset: Callable[[], Sequence[str]] = tuple,
    start_run: Callable[[], Mapping[str, Any]] | None = None,
    now: float | None = None,
) -> tuple[Decision, str]:
    """After a report against a registered version: log it to that version's run under
    `drift/<timestamp>/`, then `act_on_drift`. Returns the decision and the artifact path.

    `current_dataset` is only called when a start is possible (hashing a dataset is slow).
    """
    from mlflow import MlflowClient

    now = time.time() if now is None else now
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    mv = served_version(client, reference)
    path = log_report(client, mv.run_id, out_dir, now)
    versions: Sequence[str] = current_dataset() if drifted and on_drift == "retrain" else ()
    decision = act_on_drift(client, mv.name, str(mv.version), drifted=drifted,
                            current_dataset=versions, on_drift=on_drift,
                            cooldown_hours=cooldown_hours, start_run=start_run, now=now)  # fmt: skip
    return decision, f"runs:/{mv.run_id}/{path}"
