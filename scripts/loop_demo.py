"""The closed loop on one machine, end to end (`make loop-demo`; tests/pipelines/test_loop_demo.py).

    .venv/bin/python scripts/loop_demo.py --work /tmp/loop [--port 3123] [--json summary.json]

1. train the champion: `roadseg pipeline run --local` on dataset A (tiny: 1 epoch, 1 loss);
2. serve it: the follower (`roadseg.release.follow`, local target) packages v1 and runs
   `bentoml serve <its Bento>`; its model card answers at GET /model-card;
3. replay drifted traffic (the night and fog scenes of tests/unit/test_drift.py) into the service;
4. `roadseg drift --on-drift retrain --data-dir A`: drift, the report is logged to v1's run under
   drift/<timestamp>/, and no run starts ("no new labelled data");
5. a new dataset version B appears; the same drift check with `--data-dir B` starts exactly one
   pipeline run, whose version (v2) does not clear `register.margin` (set to 1 here: a person
   decides) and becomes @challenger;
6. the service starts again with the shadow challenger on (`ROADSEG_SHADOW_SHARE=1`): replayed
   traffic accumulates pixel agreement, summarised onto v2's tags;
7. `roadseg promote models:/roadseg-unet@challenger` (gate: shadow images seen) moves @champion;
8. the follower sees the alias moved, packages v2 into a new Bento and swaps the service, which
   reports v2 in /metadata; v2's model card answers at /model-card.

Everything lives under --work (MLflow SQLite store and artifacts, BENTOML_HOME, datasets, logs);
nothing is written to the repository. Exit 0 when every step saw what it should, 1 otherwise.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAME = "roadseg-unet"
TINY = [
    "synth.height=64",
    "synth.width=96",
    "train.epochs=1",
    "train.batch_size=4",
    "train.image_size=[64,96]",
    "model.base_channels=4",
    "data.num_workers=0",
    "pipeline.loss_variants=[wce]",
    "register.min_miou=0.0",  # a 1-epoch model must pass the gates
    "register.class_iou_floor=0.0",
]
# A 1-epoch model predicts one class everywhere: its 14 class-share features never move, so at
# most the 9 image features (of 23) can drift; the alarm's share is lowered to match.
DRIFT = ["--set", "drift.threshold=0.25"]
SHADOW_IMAGES = 16  # the promotion gate: images the challenger saw beside the champion


class Step:
    """Prints each step and collects what it saw (the --json summary)."""

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {"steps": []}
        self.t0 = time.monotonic()

    def __call__(self, title: str, **facts: Any) -> None:
        t = time.monotonic() - self.t0
        self.summary["steps"].append({"step": title, "t": round(t, 1), **facts})
        shown = ", ".join(f"{k}={v}" for k, v in facts.items())
        print(f"[{t:6.1f} s] {title}" + (f": {shown}" if shown else ""), flush=True)


def roadseg(*args: str, env: dict[str, str], log: Path, check: bool = True) -> int:
    """One `roadseg` command, its output appended to `log`; its exit code."""
    with log.open("a") as out:
        out.write(f"\n$ roadseg {' '.join(args)}\n")
        out.flush()
        code = subprocess.call([sys.executable, "-m", "roadseg.cli", *args], env=env, cwd=REPO,
                               stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    if check and code != 0:
        raise SystemExit(f"roadseg {args[0]} exited {code}; see {log}")
    return code


def scenes(root: Path, n: int, seed: int) -> list[Any]:
    """`n` synthetic road scenes (RGB uint8), the generator the datasets come from."""
    from roadseg.data.bdd100k import list_pairs, read_image
    from roadseg.data.synth import synthesize_dataset

    synthesize_dataset(root, train=n, val=0, test=0, height=64, width=96, seed=seed)
    return [read_image(p.image) for p in list_pairs(root, "train")]


def night(img: Any) -> Any:
    import numpy as np

    return (img.astype(np.float32) * np.array([0.25, 0.28, 0.4])).clip(0, 255).astype(np.uint8)


def fog(img: Any) -> Any:
    import numpy as np

    return (0.35 * img.astype(np.float32) + 0.65 * 200).clip(0, 255).astype(np.uint8)


def replay(url: str, images: list[Any]) -> int:
    """POST each image to /segment; how many answered 200."""
    import httpx
    from PIL import Image

    ok = 0
    with httpx.Client(timeout=60.0) as http:
        for img in images:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG")
            r = http.post(f"{url}/segment", content=buf.getvalue(),
                          headers={"Content-Type": "image/png"})  # fmt: skip
            ok += r.status_code == 200
    return ok


def card(url: str) -> tuple[int, str]:
    import httpx

    r = httpx.get(f"{url}/model-card", params={"format": "md"}, timeout=30.0)
    return r.status_code, r.text


def metadata(url: str) -> dict[str, Any]:
    import httpx

    return httpx.get(f"{url}/metadata", timeout=30.0).json()


def wait_for(what: str, probe, timeout: float = 120.0, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)


def _shadow_settled(meta: dict[str, Any]) -> dict[str, Any] | None:
    """/metadata's shadow entry once the challenger is loaded or refused (None while loading)."""
    shadow = meta.get("shadow")
    return shadow if isinstance(shadow, dict) and shadow.get("state") != "loading" else None


def service_params(work: Path) -> Path:
    """params.yaml for the service: the shadow challenger's summary every 2 s."""
    import yaml

    doc = yaml.safe_load((REPO / "params.yaml").read_text())
    shadow = doc.get("serve", {}).get("shadow")
    if isinstance(shadow, dict):
        shadow["log_every_s"] = 2
    path = work / "service-params.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(work: Path, port: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{work / 'mlruns.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "BENTOML_HOME": str(work / "bentoml"),
           "ROADSEG_MONITOR_DIR": str(work / "monitoring"), "PYTHONUNBUFFERED": "1"}  # fmt: skip
    env.pop("ROADSEG_API_KEY", None)
    env.pop("ROADSEG_MODEL_URI", None)
    os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_URI", "BENTOML_HOME")})
    log = work / "commands.log"
    step = Step()
    sets = [a for s in TINY for a in ("--set", s)]

    from mlflow import MlflowClient

    from roadseg.pipeline.run import ensure_experiment
    from roadseg.release.follow import Follower
    from roadseg.release.targets import LocalRelease

    ensure_experiment(uri, "bdd100k", work / "mlartifacts")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    # 1. the champion, trained on dataset A
    data_a, data_b = work / "data-a", work / "data-b"
    synth = ["--train", "8", "--val", "2", "--test", "0", "--height", "64", "--width", "96"]
    roadseg("data", "synth", "--out", str(data_a), "--seed", "1", *synth, env=env, log=log)
    roadseg("pipeline", "run", "--local", "--data-dir", str(data_a), "--work-dir",
            str(work / "pipeline"), *sets, env=env, log=log)  # fmt: skip
    v1 = client.get_model_version_by_alias(NAME, "champion")
    step("1. champion trained", version=v1.version, dataset=v1.tags.get("dataset_version"))

    # 2. served by the follower (local target): package v1, bentoml serve its Bento
    params_file = service_params(work)
    release = LocalRelease(tracking_uri=uri, port=port, log_file=work / "service.log",
                           env={**env, "ROADSEG_PARAMS": str(params_file)})  # fmt: skip
    follower = Follower(NAME, release, tracking_uri=uri)
    url = release.url
    try:
        first = follower.sync()
        meta = metadata(url)
        status, text = card(url)
        step("2. champion served", follow=first.action, bento=first.bento_tag,
             served_version=meta.get("mlflow_version"), model_card=status)  # fmt: skip
        step.summary["v1"] = {"version": str(v1.version), "bento": first.bento_tag,
                              "served": meta.get("mlflow_version"), "card_status": status,
                              "card_title": text.splitlines()[0] if status == 200 else ""}  # fmt: skip

        # 3. drifted traffic: night scenes (fog ones go to the shadow in step 6)
        traffic = scenes(work / "traffic", 24, seed=7)
        drifted = [night(i) for i in traffic]
        answered = replay(url, drifted)
        time.sleep(2)  # the monitoring writer appends off the response path
        step("3. drifted traffic replayed", images=len(drifted), answered=answered)

        # 4. drift check, dataset unchanged: report logged, no run
        drift = ["drift", "--reference", f"models:/{NAME}@champion", "--current",
                 str(work / "monitoring"), "--on-drift", "retrain", *DRIFT]  # fmt: skip
        code = roadseg(*drift, "--out", str(work / "drift-1"), "--data-dir", str(data_a),
                       *sets, "--set", "register.margin=1.0", env=env, log=log, check=False)  # fmt: skip
        tags = client.get_model_version(NAME, v1.version).tags
        reports = [f.path for f in client.list_artifacts(v1.run_id, "drift")
                   if f.is_dir and f.path != "drift/reference_profile.csv"]  # fmt: skip
        versions_after_1 = len(client.search_model_versions(f"name='{NAME}'"))
        step("4. drift check, dataset unchanged", exit=code, decision=tags.get("drift_decision"),
             reports=len(reports), versions=versions_after_1)  # fmt: skip
        step.summary["check1"] = {"exit": code, "decision": tags.get("drift_decision", ""),
                                  "reports": reports, "versions": versions_after_1}  # fmt: skip

        # 5. a new dataset version; the next check starts exactly one run -> v2 @challenger
        roadseg("data", "synth", "--out", str(data_b), "--seed", "2", *synth, env=env, log=log)
        code = roadseg(*drift, "--out", str(work / "drift-2"), "--data-dir", str(data_b),
                       *sets, "--set", "register.margin=1.0", env=env, log=log, check=False)  # fmt: skip
        tags = client.get_model_version(NAME, v1.version).tags
        versions = client.search_model_versions(f"name='{NAME}'")
        challenger = client.get_model_version_by_alias(NAME, "challenger")
        step("5. new data, drift check", exit=code, decision=tags.get("drift_decision"),
             versions=len(versions), challenger=challenger.version)  # fmt: skip
        step.summary["check2"] = {"exit": code, "decision": tags.get("drift_decision", ""),
                                  "versions": len(versions), "retrain_run": tags.get("retrain_run"),
                                  "challenger": str(challenger.version),
                                  "champion": str(client.get_model_version_by_alias(
                                      NAME, "champion").version)}  # fmt: skip

        # 6. shadow traffic: the service starts again with the challenger beside the champion
        release.env["ROADSEG_SHADOW_SHARE"] = "1.0"
        release.start(release.bento_tag)
        shadow = wait_for("the shadow challenger to load or be refused",
                          lambda: _shadow_settled(metadata(url)), timeout=120)  # fmt: skip
        if shadow.get("state") != "on":
            raise SystemExit(f"shadow challenger not on: {shadow}")
        replay(url, [fog(i) for i in traffic[:SHADOW_IMAGES]] + drifted[:SHADOW_IMAGES])

        def evidence() -> dict[str, str] | None:
            t = client.get_model_version(NAME, challenger.version).tags
            return t if int(t.get("shadow.images") or 0) >= SHADOW_IMAGES else None

        ev = wait_for("shadow evidence on the challenger", evidence, timeout=90)
        step("6. shadow traffic", challenger=shadow.get("challenger_version"), images=ev.get("shadow.images"),
             agreement=ev.get("shadow.agreement"))  # fmt: skip
        step.summary["shadow"] = {"images": int(ev["shadow.images"]),
                                  "agreement": float(ev["shadow.agreement"])}  # fmt: skip

        # 7. roadseg promote: the gates (shadow evidence included) pass, @champion moves
        code = roadseg("promote", f"models:/{NAME}@challenger", "--by", "loop-demo", *sets,
                       "--set", f"register.shadow_min_images={SHADOW_IMAGES}", env=env, log=log,
                       check=False)  # fmt: skip
        champion = str(client.get_model_version_by_alias(NAME, "champion").version)
        step("7. roadseg promote", exit=code, champion=champion)
        step.summary["promote"] = {"exit": code, "champion": champion}

        # 8. the follower: alias moved -> package v2, swap the service, check it
        second = follower.sync()
        meta = metadata(url)
        status, text = card(url)
        third = follower.sync()  # idempotent: nothing more to do
        step("8. release followed the registry", follow=second.action, bento=second.bento_tag,
             served_version=meta.get("mlflow_version"), model_card=status,
             again=third.action)  # fmt: skip
        step.summary["v2"] = {"version": champion, "follow": second.action,
                              "bento": second.bento_tag, "served": meta.get("mlflow_version"),
                              "bento_served": meta.get("bento_tag"), "card_status": status,
                              "card_title": text.splitlines()[0] if status == 200 else "",
                              "again": third.action}  # fmt: skip
    finally:
        release.stop()
    return step.summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for everything it makes")
    ap.add_argument("--port", type=int, default=3123, help="the service's port")
    ap.add_argument("--json", type=Path, help="write the summary here")
    args = ap.parse_args()
    summary = run(args.work.resolve(), args.port)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    ok = (summary["check1"]["versions"] == 1 and summary["check2"]["versions"] == 2
          and summary["promote"]["exit"] == 0 and summary["v2"]["served"] == summary["v2"]["version"])  # fmt: skip
    print("loop closed" if ok else "loop NOT closed: see the steps above", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
