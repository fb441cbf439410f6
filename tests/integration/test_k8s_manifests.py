"""Offline checks of the Kubernetes deployment (k8s/): render, validate, scan, names agree.

    .venv/bin/pytest tests/integration/test_k8s_manifests.py -q      # or: make k8s-check

Both overlays are rendered with `kubectl kustomize` (or a `kustomize` binary) from a copy of k8s/
whose secret env files are the committed `.example`s, so real local secrets never enter a test.
Every rendered object is validated strictly against the Kubernetes OpenAPI schemas of the newest
release `kubernetes-validate` ships; the two Prometheus Operator CRDs, which it has no schema for,
against the subset of their CRD schema used here (unknown fields rejected). checkov (installed into
.venv-tools by `make tools`, its pins clash with mlflow/torch) must report no failed check beyond
the waivers in .checkov.yaml. The last tests read both sides of every name the manifests share with
the Bento service, the library and the pipeline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("dev", "prod")
CHECKOV = REPO / ".venv-tools/bin/checkov"
SERVICE_IMAGE = "ghcr.io/roadseg/roadseg-service"
PIPELINE_IMAGE = "ghcr.io/roadseg/roadseg-pipeline"
MONITOR_DIR = "/var/lib/roadseg/monitoring"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

Docs = list[dict[str, Any]]


# --- rendering ---------------------------------------------------------------------------------


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Docs]]:
    """overlay -> (rendered YAML file, parsed objects)."""
    cmd = _kustomize_cmd()
    if cmd is None:
        pytest.skip("neither kubectl nor kustomize on PATH: cannot render the overlays")
    work = tmp_path_factory.mktemp("k8s")
    tree = work / "k8s"
    shutil.copytree(K8S, tree, ignore=shutil.ignore_patterns("*.env"))
    for example in tree.glob("overlays/*/secrets/*.env.example"):
        shutil.copy(example, example.with_suffix(""))
    out: dict[str, tuple[Path, Docs]] = {}
    for overlay in OVERLAYS:
        proc = subprocess.run(
            [*cmd, str(tree / "overlays" / overlay)], capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, f"{overlay} does not render:\n{proc.stderr}"
        path = work / f"{overlay}.yaml"
        path.write_text(proc.stdout)
        out[overlay] = (path, [d for d in yaml.safe_load_all(proc.stdout) if d])
    return out


def _find(docs: Docs, kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(hits) == 1, f"expected one {kind}/{name}, found {len(hits)}"
    return hits[0]


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def _workloads(docs: Docs) -> Docs:
    return [d for d in docs if d["kind"] in {"Deployment", "StatefulSet", "CronJob", "Job"}]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _bento(docs: Docs) -> dict[str, Any]:
    return _pod_spec(_find(docs, "Deployment", "roadseg-service"))["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_every_part(rendered, overlay: str) -> None:
    _, docs = rendered[overlay]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {
        ("Namespace", "roadseg"),
        ("Deployment", "roadseg-service"),
        ("Service", "roadseg-service"),
        ("HorizontalPodAutoscaler", "roadseg-service"),
        ("PodDisruptionBudget", "roadseg-service"),
        ("NetworkPolicy", "roadseg-service"),
        ("Ingress", "roadseg-service"),
        ("ServiceMonitor", "roadseg-service"),
        ("Deployment", "mlflow"),
        ("Service", "mlflow"),
        ("StatefulSet", "mlflow-postgres"),
        ("StatefulSet", "mlflow-minio"),
        ("CronJob", "roadseg-drift"),
        ("Deployment", "pushgateway"),
        ("PrometheusRule", "roadseg"),
        ("PersistentVolumeClaim", "roadseg-monitoring"),
        ("ServiceAccount", "roadseg-pipeline"),
        ("Role", "roadseg-pipeline"),
        ("RoleBinding", "roadseg-pipeline"),
        ("ConfigMap", "roadseg-pipeline-config"),
        ("Role", "roadseg-deploy"),
        ("RoleBinding", "roadseg-deploy"),
        ("ConfigMap", "roadseg-buildkit-job"),
        ("Secret", "roadseg-registry-credentials"),
        ("NetworkPolicy", "roadseg-service-deploy-check"),
    }
    assert expected <= kinds, f"missing: {sorted(expected - kinds)}"
    assert all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_and_configmap_reference_resolves(rendered, overlay: str) -> None:
    """Each secretKeyRef/configMapKeyRef names an object in the pod's namespace that has the key
    (the overlays filled every placeholder Secret from its env file)."""
    _, docs = rendered[overlay]
    data = {
        (d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]): set(d.get("data") or {})
        for d in docs
        if d["kind"] in {"Secret", "ConfigMap"}
    }
    for kind, placeholder in [(k, v) for k, v in data.items() if k[0] == "Secret"]:
        assert placeholder, f"{kind} is still an empty placeholder"
    refs = 0
    for wl in _workloads(docs):
        ns = wl["metadata"]["namespace"]
        spec = _pod_spec(wl)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for e in c.get("env", []):
                for ref_kind, field in (
                    ("Secret", "secretKeyRef"),
                    ("ConfigMap", "configMapKeyRef"),
                ):
                    ref = e.get("valueFrom", {}).get(field)
                    if ref:
                        refs += 1
                        keys = data.get((ref_kind, ns, ref["name"]))
                        assert keys is not None, (
                            f"{wl['metadata']['name']}: no {ref_kind} {ref['name']}"
                        )
                        assert ref["key"] in keys, f"{ref_kind} {ref['name']} lacks {ref['key']}"
    assert refs >= 20


# --- schema validation -------------------------------------------------------------------------

_DURATION = {
    "type": "string",
    "pattern": r"^(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)$",
}
_META = {"type": "object", "required": ["name"]}
_LABEL_SELECTOR = {
    "type": "object",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
    "additionalProperties": False,
}
# The parts of the monitoring.coreos.com/v1 CRD schemas (prometheus-operator) these manifests use,
# field names copied from the CRDs; anything else is rejected so a typo cannot pass silently.
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "namespaceSelector": {"type": "object"},
                    "jobLabel": {"type": "string"},
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "targetPort": {"type": ["string", "integer"]},
                                "path": {"type": "string", "pattern": "^/"},
                                "scheme": {"enum": ["http", "https"]},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                                "honorLabels": {"type": "boolean"},
                                "honorTimestamps": {"type": "boolean"},
                                "relabelings": {"type": "array"},
                                "metricRelabelings": {"type": "array"},
                                "tlsConfig": {"type": "object"},
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _META,
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "minLength": 1},
                                "interval": _DURATION,
                                "limit": {"type": "integer"},
                                "labels": {"type": "object"},
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "alert": {"type": "string"},
                                            "record": {"type": "string"},
                                            "expr": {"type": ["string", "integer"]},
                                            "for": _DURATION,
                                            "keep_firing_for": _DURATION,
                                            "labels": {"type": "object"},
                                            "annotations": {"type": "object"},
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


def _validate(obj: dict[str, Any]) -> None:
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    if obj["kind"] in CRD_KINDS:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
    else:
        kubernetes_validate.validate(obj, latest_version(), strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifests_validate_strictly(rendered, overlay: str) -> None:
    pytest.importorskip("kubernetes_validate")
    _, docs = rendered[overlay]
    errors = []
    for d in docs:
        try:
            _validate(d)
        except Exception as e:  # collect all, report together
            errors.append(f"{d['kind']}/{d['metadata']['name']}: {type(e).__name__}: {e}"[:400])
    assert not errors, "\n".join(errors)


def test_validation_rejects_unknown_fields(rendered) -> None:
    """The strict checks above can fail: a misspelt field in a core object and in a CRD."""
    pytest.importorskip("kubernetes_validate")
    _, docs = rendered["prod"]
    deployment = json.loads(json.dumps(_find(docs, "Deployment", "roadseg-service")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(Exception, match="readinessprobe"):
        _validate(deployment)
    rule = json.loads(json.dumps(_find(docs, "PrometheusRule", "roadseg")))
    rule["spec"]["groups"][0]["rules"][0]["fro"] = "5m"
    with pytest.raises(Exception, match="fro"):
        _validate(rule)


# --- security ----------------------------------------------------------------------------------


def _waivers() -> dict[str, str]:
    waived = {}
    for line in (REPO / ".checkov.yaml").read_text().splitlines():
        m = re.match(r"\s*-\s*(CKV\w+)\s*(?:#\s*(.*))?$", line)
        if m:
            waived[m.group(1)] = (m.group(2) or "").strip()
    return waived


def test_every_checkov_waiver_gives_its_reason() -> None:
    waived = _waivers()
    assert waived, ".checkov.yaml waives nothing; drop this test or the file"
    assert all(len(reason) > 20 for reason in waived.values()), waived


def test_checkov_finds_no_unwaived_failure(rendered, tmp_path: Path) -> None:
    if not CHECKOV.exists():
        pytest.skip("checkov not installed: run `make tools` (it lives in .venv-tools)")
    scan = tmp_path / "scan"
    scan.mkdir()
    for overlay, (path, _) in rendered.items():
        shutil.copy(path, scan / f"{overlay}.yaml")
    shutil.copy(REPO / "Dockerfile", scan / "Dockerfile")
    proc = subprocess.run(
        [str(CHECKOV), "--config-file", str(REPO / ".checkov.yaml"), "-d", str(scan), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    frameworks = {r["check_type"] for r in reports}
    assert {"kubernetes", "dockerfile"} <= frameworks, proc.stdout[:500]
    failed = [
        f"{c['check_id']} {c['resource']} ({r['check_type']})"
        for r in reports
        for c in r["results"].get("failed_checks", [])
    ]
    assert not failed, "\n".join(failed)
    passed = sum(r["summary"]["passed"] for r in reports)
    skipped = {c["check_id"] for r in reports for c in r["results"].get("skipped_checks", [])}
    assert passed > 500
    assert skipped <= set(_waivers())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened(rendered, overlay: str) -> None:
    _, docs = rendered[overlay]
    for wl in _workloads(docs):
        spec, name = _pod_spec(wl), wl["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            assert {"requests", "limits"} <= set(c["resources"]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_deployment_shape(rendered, overlay: str) -> None:
    _, docs = rendered[overlay]
    dep = _find(docs, "Deployment", "roadseg-service")
    spec = _pod_spec(dep)
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in _bento(docs)["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert (
        volumes[mounts[MONITOR_DIR]]["persistentVolumeClaim"]["claimName"] == "roadseg-monitoring"
    )
    pvc = _find(docs, "PersistentVolumeClaim", "roadseg-monitoring")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    hpa = _find(docs, "HorizontalPodAutoscaler", "roadseg-service")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Resource", "Pods"}
    limits = _bento(docs)["resources"]["limits"]
    threads = _env(_bento(docs))["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
    assert threads == {"resource": "limits.cpu", "divisor": "1"}  # torch threads = the CPU limit
    assert "cpu" in limits
    if overlay == "prod":
        assert limits["nvidia.com/gpu"] == 1
        assert spec["nodeSelector"] and spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    else:
        assert "nvidia.com/gpu" not in limits and "nodeSelector" not in spec


def test_network_policy_admits_only_ingress_controller_and_prometheus(rendered) -> None:
    _, docs = rendered["prod"]
    policy = _find(docs, "NetworkPolicy", "roadseg-service")
    sources = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["spec"]["ingress"]
        for peer in rule["from"]
    ]
    assert sorted(sources) == ["ingress-nginx", "monitoring"]
    deny = _find(docs, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}


def test_pipeline_role_is_least_privilege(rendered) -> None:
    _, docs = rendered["prod"]
    role = _find(docs, "Role", "roadseg-pipeline")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"create", "delete", "deletecollection", "list"} & set(rule["verbs"]) or (
            rule["resources"] == ["workflowtaskresults"]
        ), rule
        if "secrets" in rule["resources"]:
            assert rule.get("resourceNames"), "secrets readable only by name"
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]


# --- names agree across sides ------------------------------------------------------------------


def _kustomize_images() -> dict[str, str]:
    base = yaml.safe_load((K8S / "base/kustomization.yaml").read_text())
    return {i["name"]: i["newTag"] for i in base["images"]}


def test_image_tags_are_pinned_once(rendered) -> None:
    tags = _kustomize_images()
    for overlay in OVERLAYS:
        kust = yaml.safe_load((K8S / "overlays" / overlay / "kustomization.yaml").read_text())
        assert "images" not in kust, f"{overlay} re-pins images; the tag lives in the base only"
        _, docs = rendered[overlay]
        images = {
            c["image"]
            for wl in _workloads(docs)
            for c in _pod_spec(wl).get("initContainers", []) + _pod_spec(wl)["containers"]
        }
        assert f"{SERVICE_IMAGE}:{tags[SERVICE_IMAGE]}" in images
        assert f"{PIPELINE_IMAGE}:{tags[PIPELINE_IMAGE]}" in images
        assert all(":" in i and not i.endswith(":latest") for i in images), images


def test_pipeline_components_pin_the_same_image() -> None:
    """The components' base image (a constant in components/) is the kustomize-pinned one."""
    sources = {p: p.read_text() for p in (REPO / "components").rglob("*.py")}
    sources |= {p: p.read_text() for p in (REPO / "pipelines").glob("*.py")}
    pins = {
        m.group(1)
        for text in sources.values()
        for m in re.finditer(re.escape(PIPELINE_IMAGE) + r":([\w.-]+)", text)
    }
    assert pins, f"no {PIPELINE_IMAGE}:<tag> constant found in components/ or pipelines/"
    assert pins == {_kustomize_images()[PIPELINE_IMAGE]}


def test_service_port_probes_and_metrics_match_the_bento_service(rendered, params) -> None:
    from roadseg.serve.api import OPEN_PATHS

    source = (REPO / "bento/service.py").read_text()
    port = int(re.search(r"http=\{\s*\"port\":\s*(\d+)", source).group(1))
    assert port == params.serve.port == 3000
    for overlay in OVERLAYS:
        _, docs = rendered[overlay]
        bento = _bento(docs)
        assert [p["containerPort"] for p in bento["ports"]] == [port]
        svc = _find(docs, "Service", "roadseg-service")
        assert [p["port"] for p in svc["spec"]["ports"]] == [port]
        probes = {k: bento[k]["httpGet"]["path"] for k in bento if k.endswith("Probe")}
        assert probes == {
            "startupProbe": "/readyz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }
        monitor = _find(docs, "ServiceMonitor", "roadseg-service")
        paths = {e["path"] for e in monitor["spec"]["endpoints"]}
        # Probes and scrapes carry no API key: the service must leave these paths open.
        assert set(probes.values()) | paths <= set(OPEN_PATHS)


def test_env_names_match_what_the_service_reads(rendered) -> None:
    # The service's start-up reads them in these two files.
    source = "".join(
        (REPO / f).read_text() for f in ("bento/service.py", "roadseg/serve/lifecycle.py")
    )
    read = set(re.findall(r"os\.environ(?:\.get)?[\(\[]\s*\"(ROADSEG_\w+)\"", source))
    assert {"ROADSEG_MODEL_URI", "ROADSEG_API_KEY", "ROADSEG_MONITOR_DIR"} <= read
    default_uri = re.search(r"DEFAULT_MODEL_URI\s*=\s*\"([^\"]+)\"", source).group(1)
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    image_env = {e["name"]: e.get("value") for e in bentofile.get("envs", [])}
    assert {n for n in image_env if n.startswith("ROADSEG_")} <= read
    assert "ROADSEG_MODEL_URI" not in image_env  # the image serves its packaged model
    for overlay in OVERLAYS:
        _, docs = rendered[overlay]
        env = _env(_bento(docs))
        given = {n for n in env if n.startswith("ROADSEG_")}
        assert given <= read, f"manifest sets names the service never reads: {given - read}"
        assert {"ROADSEG_API_KEY", "ROADSEG_MONITOR_DIR"} <= given
        # The pods serve the model packaged in their image; a URI here would override it.
        assert "ROADSEG_MODEL_URI" not in given
        assert env["ROADSEG_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "roadseg-api-key"
        assert env["ROADSEG_MONITOR_DIR"]["value"] == MONITOR_DIR
        config = _find(docs, "ConfigMap", "roadseg-service-config")["data"]
        assert config["ROADSEG_MODEL_URI"] == default_uri
        drift = _pod_spec(_find(docs, "CronJob", "roadseg-drift"))["containers"][0]
        assert _env(drift)["ROADSEG_MONITOR_DIR"]["value"] == MONITOR_DIR
        assert MONITOR_DIR in {m["mountPath"] for m in drift["volumeMounts"]}


def test_drift_cronjob_command_is_accepted_by_the_cli(rendered) -> None:
    """The CronJob's `roadseg drift` arguments parse with the real CLI and push where alerts look."""
    import typer.main

    from roadseg.cli import app

    _, docs = rendered["prod"]
    drift = _pod_spec(_find(docs, "CronJob", "roadseg-drift"))["containers"][0]
    env = {n: e.get("value", f"<{n}>") for n, e in _env(drift).items()}
    argv = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in drift["command"]]
    assert argv[:2] == ["roadseg", "drift"]
    command = typer.main.get_command(app).commands["drift"]
    ctx = command.make_context("drift", argv[2:])  # raises on an unknown or missing option
    assert ctx.params["current"] == Path(MONITOR_DIR)
    assert (
        ctx.params["pushgateway"]
        == f"http://pushgateway:{_find(docs, 'Service', 'pushgateway')['spec']['ports'][0]['port']}"
    )
    assert ctx.params["reference"] == "<ROADSEG_MODEL_URI>"  # from roadseg-service-config
    assert ctx.params["on_drift"] in ("alert", "retrain")  # drift.on_drift's values
    from roadseg.monitor.drift import (
        PUSHGATEWAY_JOB,  # the job `roadseg drift --pushgateway` pushes as
    )

    groups = _find(docs, "PrometheusRule", "roadseg")["spec"]["groups"]
    assert any(f'job="{PUSHGATEWAY_JOB}"' in r["expr"] for g in groups for r in g["rules"])


def test_ingress_body_limit_matches_the_service(rendered, params) -> None:
    mib = params.serve.max_request_bytes / 2**20
    assert mib == int(mib)
    for overlay in OVERLAYS:
        _, docs = rendered[overlay]
        ingress = _find(docs, "Ingress", "roadseg-service")
        limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
        assert limit == f"{int(mib)}m"


def test_alerts_use_metrics_that_exist(rendered) -> None:
    """Drift gauges are the ones `roadseg.monitor.drift` writes; service metrics use BentoML's namespace."""
    from roadseg.monitor.drift import DriftResult, prometheus_text

    text = prometheus_text(DriftResult(0.6, 0.5, {}, 10, 10), "3")
    written = set(re.findall(r"^# TYPE (\w+) ", text, flags=re.M))
    import bentoml

    defaults = (
        Path(bentoml.__file__).parent / "_internal/configuration/v2/default_configuration.yaml"
    )
    namespace = yaml.safe_load(defaults.read_text())["services"]["metrics"]["namespace"]
    _, docs = rendered["prod"]
    exprs = " ".join(
        r["expr"]
        for g in _find(docs, "PrometheusRule", "roadseg")["spec"]["groups"]
        for r in g["rules"]
    )
    drift = set(re.findall(r"\broadseg_drift_\w+", exprs))
    assert drift and drift <= written
    bento = set(re.findall(r"\bbentoml_\w+", exprs))
    assert bento and all(m.startswith(f"{namespace}_request_") for m in bento)
    hpa = _find(docs, "HorizontalPodAutoscaler", "roadseg-service")
    pods_metric = next(m for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    assert pods_metric["pods"]["metric"]["name"] == f"{namespace}_request_in_progress"


@pytest.fixture(scope="module")
def pipeline_ir(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline compiled now from pipelines/training_pipeline.py (its platform spec part)."""
    out = tmp_path_factory.mktemp("ir") / "pipeline.yaml"
    code = (
        "from kfp import compiler\n"
        "from pipelines.training_pipeline import training_pipeline\n"
        f"compiler.Compiler().compile(training_pipeline, {str(out)!r})\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"the pipeline does not compile:\n{proc.stderr[-2000:]}"
    platform = [d for d in yaml.safe_load_all(out.read_text()) if d and "platforms" in d]
    assert platform, "the compiled pipeline carries no Kubernetes platform spec"
    return platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_pipeline_config_names_match_the_compiled_pipeline(rendered, pipeline_ir) -> None:
    """The ConfigMap/Secret the pipeline tasks map to env vars exist with those keys."""
    wanted: dict[tuple[str, str], set[str]] = {}
    for ex in pipeline_ir.values():
        for cm in ex.get("configMapAsEnv", []):
            keys = {k["configMapKey"] for k in cm["keyToEnv"]}
            wanted.setdefault(("ConfigMap", cm["configMapName"]), set()).update(keys)
        for sec in ex.get("secretAsEnv", []):
            keys = {k["secretKey"] for k in sec["keyToEnv"]}
            wanted.setdefault(("Secret", sec["secretName"]), set()).update(keys)
    assert wanted.get(("ConfigMap", "roadseg-pipeline-config"), set()) >= {"MLFLOW_TRACKING_URI"}
    assert ("Secret", "roadseg-mlflow-credentials") in wanted
    for overlay in OVERLAYS:
        _, docs = rendered[overlay]
        kubeflow = [d for d in docs if d["metadata"].get("namespace") == "kubeflow"]
        for (kind, name), keys in wanted.items():
            obj = _find(kubeflow, kind, name)
            assert keys <= set(obj.get("data") or {}), f"{kind} {name} lacks {keys}"
        # The pipeline's MLflow is the server these manifests deploy.
        uri = _find(kubeflow, "ConfigMap", "roadseg-pipeline-config")["data"]["MLFLOW_TRACKING_URI"]
        svc = _find(docs, "Service", "mlflow")
        assert uri == f"http://mlflow.{svc['metadata']['namespace']}.svc.cluster.local:" + str(
            svc["spec"]["ports"][0]["port"]
        )


def test_gpu_scheduling_agrees_between_training_and_serving(rendered, pipeline_ir) -> None:
    _, docs = rendered["prod"]
    serving = _pod_spec(_find(docs, "Deployment", "roadseg-service"))
    gpu_tasks = [ex for ex in pipeline_ir.values() if ex.get("nodeSelector")]
    assert gpu_tasks, "no pipeline task is pinned to GPU nodes"
    for ex in gpu_tasks:
        assert ex["nodeSelector"]["labels"] == serving["nodeSelector"]
        assert {t["key"] for t in ex["tolerations"]} == {t["key"] for t in serving["tolerations"]}


# --- images --------------------------------------------------------------------------------------


def _stages(dockerfile: str) -> dict[str, list[str]]:
    """Stage name -> its instructions (continuation lines joined)."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    for line in re.sub(r"\\\n\s*", " ", dockerfile).splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, flags=re.I)
        if m:
            current = stages.setdefault(m.group(1) or f"stage{len(stages)}", [])
        elif line.strip() and not line.lstrip().startswith("#"):
            current.append(line.strip())
    return stages


def test_dockerfile_is_multi_stage_non_root_and_installs_the_locks() -> None:
    """The images install the locks (tests/unit/test_lock.py checks those against lock.txt)."""
    text = (REPO / "Dockerfile").read_text()
    stages = _stages(text)
    assert {"build", "runtime", "mlflow-build", "mlflow"} <= set(stages)
    assert list(stages)[-1] == "runtime", "the default target must be the pipeline image"
    for final in ("runtime", "mlflow"):
        users = [i.split()[1] for i in stages[final] if i.startswith("USER ")]
        assert users and users[-1] not in {"0", "root"}, final
        assert not any(i.startswith("RUN pip") for i in stages[final]), f"{final} builds nothing"
    build = " ".join(stages["build"])
    assert "COPY requirements/runtime-${VARIANT}.txt /tmp/requirements.txt" in build
    assert "ARG VARIANT=gpu" in build and '--extra-index-url "$TORCH_INDEX"' in build
    # Clients and server speak the same MLflow: the server installs mlflow-server.txt.
    assert "COPY requirements/mlflow-server.txt" in " ".join(stages["mlflow-build"])
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignored, "the build context is an allow-list"
    assert "!roadseg/" in ignored and "!params.yaml" in ignored


def test_pipeline_image_holds_the_bento_build_context() -> None:
    """The pipeline's package step builds the Bento inside the pipeline image (build context
    /app): everything bentofile.yaml reads must be copied there and let through .dockerignore."""
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text())
    needed = {"bentofile.yaml", bentofile["python"]["requirements_txt"].removeprefix("./")}
    needed |= {pattern.split("/")[0] for pattern in bentofile["include"]}
    build = " ".join(_stages((REPO / "Dockerfile").read_text())["build"])
    copied = set(re.findall(r"COPY (?:--\S+ )*(\S+(?: \S+)*?) \S+(?= COPY| RUN| #|$)", build))
    sources = {src for group in copied for src in group.split()}
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    for path in sorted(needed):
        top = path.split("/")[0]
        assert path in sources or top in sources, f"the pipeline image lacks {path}"
        assert any(line.lstrip("!").rstrip("/*").split("/")[0] == top for line in ignored
                   if line.startswith("!")), f".dockerignore keeps {path} out"  # fmt: skip


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = REPO / ".venv-tools/bin/hadolint"
    if not hadolint.exists():
        pytest.skip("hadolint not installed: run `make tools`")
    proc = subprocess.run(
        [str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_deploy_docs_commands_use_the_pinned_images() -> None:
    section = (REPO / "docs/platform/deploy.md").read_text()
    assert section.startswith("# Deploy to Kubernetes")
    tags = _kustomize_images()
    assert f"TAG={tags[SERVICE_IMAGE]}" in section
    reg = re.search(r"^REG=(\S+)", section, flags=re.M).group(1)
    assert "bentoml containerize roadseg:latest -t $REG/roadseg-service:$TAG" in section
    assert "docker build -t $REG/roadseg-pipeline:$TAG ." in section
    assert f"{reg}/roadseg-service" == SERVICE_IMAGE
    assert f"{reg}/roadseg-pipeline" == PIPELINE_IMAGE
    assert len({tags[SERVICE_IMAGE], tags[PIPELINE_IMAGE], tags[f"{reg}/roadseg-mlflow"]}) == 1
    assert "kubectl apply -k k8s/overlays/prod" in section
    assert "X-API-Key" in section and "roadseg pipeline submit --host" in section


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_drains_within_its_grace_period_and_says_why_it_failed(rendered, overlay) -> None:
    """SIGTERM: the preStop pause, then serve.drain_seconds for the requests in flight, both
    inside the grace period; a failed start leaves its one-line reason as the termination
    message."""
    from roadseg.config import load_params

    _, docs = rendered[overlay]
    pod, bento = _pod_spec(_find(docs, "Deployment", "roadseg-service")), _bento(docs)
    args = bento["args"]
    drain = int(args[args.index("--timeout-graceful-shutdown") + 1])
    assert drain == load_params().serve.drain_seconds
    pause = bento["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep" and pause[1].isdigit()
    assert int(pause[1]) + drain < pod["terminationGracePeriodSeconds"]
    assert bento["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_follow_deployment_runs_the_cli_with_the_deploy_role(rendered) -> None:
    """`roadseg follow` (releases follow the registry): its arguments parse with the real CLI,
    it is bound to the deploy step's Role only, its webhook port admits MLflow only, and it may
    reach the service it checks."""
    import typer.main

    from roadseg.cli import app

    _, docs = rendered["prod"]
    dep = _find(docs, "Deployment", "roadseg-follow")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    spec = _pod_spec(dep)
    follow = spec["containers"][0]
    assert spec["automountServiceAccountToken"] is False  # the token is projected, explicitly
    token = next(v for v in spec["volumes"] if v["name"] == "api-token")["projected"]["sources"]
    assert token[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    assert follow["command"][:2] == ["roadseg", "follow"]
    ctx = (
        typer.main.get_command(app).commands["follow"].make_context("follow", follow["command"][2:])
    )
    assert ctx.params["listen"] and ctx.params["poll"] > 0 and ctx.params["target"] == "cluster"
    port = ctx.params["port"]
    assert [p["containerPort"] for p in follow["ports"]] == [port]
    secret = _env(follow)["ROADSEG_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "roadseg-follow-webhook", "key": "ROADSEG_WEBHOOK_SECRET"}
    binding = _find(docs, "RoleBinding", "roadseg-follow")
    assert binding["roleRef"]["name"] == "roadseg-deploy"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": spec["serviceAccountName"], "namespace": "roadseg"}
    ]
    policy = _find(docs, "NetworkPolicy", "roadseg-follow")["spec"]["ingress"]
    assert policy == [{"from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}],
                       "ports": [{"port": port, "protocol": "TCP"}]}]  # fmt: skip
    check = _find(docs, "NetworkPolicy", "roadseg-service-follow-check")["spec"]
    assert check["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "roadseg-follow"
    }
