"""Validate custom resources against their CRDs' OpenAPI v3 schemas, offline, in strict mode.

kubernetes-validate knows only the built-in kinds. The chart also renders custom resources
(KubeRay RayCluster, KEDA ScaledObject / TriggerAuthentication, Prometheus Operator
ServiceMonitor / PodMonitor / PrometheusRule); their CRDs' `openAPIV3Schema`s are vendored in
helm/crd-schemas/<group>/<Kind>_<version>.json (sources and versions in its README.md).

A CRD schema is a *structural* OpenAPI v3 schema, which the API server applies with rules that
plain JSON Schema lacks; `to_json_schema` spells them out so that jsonschema enforces the same:
- an object with `properties` keeps no other field: the API server prunes unknown fields (and
  rejects them under `kubectl --validate=strict`, the default since 1.27), so here they are errors
  (`additionalProperties: false`), unless `x-kubernetes-preserve-unknown-fields: true`;
- `nullable: true` admits null; `x-kubernetes-int-or-string` admits an integer or a string;
- the root `metadata` (just `type: object` in every CRD) is validated by the API server as
  ObjectMeta, so here it is the strict ObjectMeta of the Kubernetes schemas;
- `x-kubernetes-list-type: set` / `map` (+ `x-kubernetes-list-map-keys`) forbid duplicates;
- `format: int32` / `int64` bound integers.
`x-kubernetes-map-type` and `default` change nothing for validation. Rules this check cannot
evaluate (`x-kubernetes-validations`, CEL) or extensions it does not know make loading the schema
fail, rather than be ignored.

Where a vendored schema embeds a core type (a pod template in a RayCluster) it refers to the
Kubernetes schema of that type (`$ref` to https://kubernetes.io/api/_definitions.json#/$defs/...),
resolved to kubernetes-validate's strict schemas for the chart's target Kubernetes version.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "helm" / "crd-schemas"
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{K8S_DEFINITIONS}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}

# Copied as they are: JSON Schema keywords with the same meaning in OpenAPI v3, and annotations.
PLAIN_KEYWORDS = {
    "type", "format", "enum", "pattern", "minimum", "maximum", "exclusiveMinimum",
    "exclusiveMaximum", "minLength", "maxLength", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "multipleOf", "required", "default", "description",
    "title", "example", "$ref",
}  # fmt: skip
SUBSCHEMA_LISTS = {"anyOf", "allOf", "oneOf"}
# Extensions whose effect is handled below (or that have none on validation).
KNOWN_EXTENSIONS = {
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
}
INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class SchemaError(ValueError):
    """A vendored schema uses something this check cannot enforce faithfully."""


def schema_path(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return SCHEMAS / (group or "core") / f"{kind}_{version}.json"


def to_json_schema(node: dict[str, Any], where: str = "", root: bool = True) -> dict[str, Any]:
    """One structural-schema node as the JSON Schema that rejects what the API server would."""
    unknown = set(node) - PLAIN_KEYWORDS - SUBSCHEMA_LISTS - KNOWN_EXTENSIONS
    unknown -= {"properties", "additionalProperties", "items", "not", "nullable"}
    if unknown:
        raise SchemaError(f"{where or '<root>'}: cannot enforce {sorted(unknown)}")
    out = {key: node[key] for key in PLAIN_KEYWORDS & set(node)}
    for key in SUBSCHEMA_LISTS & set(node):
        out[key] = [to_json_schema(s, f"{where}.{key}", False) for s in node[key]]
    if "not" in node:
        out["not"] = to_json_schema(node["not"], f"{where}.not", False)
    if "items" in node:
        out["items"] = to_json_schema(node["items"], f"{where}[]", False)
    if "properties" in node:
        out["properties"] = {
            name: to_json_schema(sub, f"{where}.{name}", False)
            for name, sub in node["properties"].items()
        }
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(
            node["additionalProperties"], f"{where}.*", False
        )
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif node.get("type") == "object" and not preserve and "$ref" not in node:
        out["additionalProperties"] = False  # unknown fields are pruned / rejected
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    for key in ("x-kubernetes-list-type", "x-kubernetes-list-map-keys"):
        if key in node:
            out[key] = node[key]
    if root:
        out.setdefault("properties", {})["metadata"] = OBJECT_META
    return out


def _list_type(validator, list_type, instance, schema):  # noqa: ANN001 (jsonschema's signature)
    """x-kubernetes-list-type: no duplicate item (set) or no two items with the same keys (map)."""
    from jsonschema import ValidationError

    if not isinstance(instance, list) or list_type == "atomic":
        return
    keys = schema.get("x-kubernetes-list-map-keys", [])
    seen: set[str] = set()
    for item in instance:
        identity = json.dumps(
            [item.get(k) for k in keys] if list_type == "map" and isinstance(item, dict) else item,
            sort_keys=True,
        )
        if identity in seen:
            what = f"keys {keys} = {identity}" if list_type == "map" else identity
            yield ValidationError(f"duplicate item in a list of type {list_type}: {what}")
        seen.add(identity)


@cache
def _validator_class():
    from jsonschema import Draft202012Validator, validators

    return validators.extend(Draft202012Validator, {"x-kubernetes-list-type": _list_type})


@cache
def _format_checker():
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())
    for name, (low, high) in INT_RANGES.items():
        checker.checks(name)(
            lambda value, low=low, high=high: not isinstance(value, int) or low <= value <= high
        )
    return checker


@cache
def _registry(kube_version: str):
    import kubernetes_validate
    from referencing import Registry, Resource

    major_minor = ".".join(kube_version.lstrip("v").split(".")[:2])
    path = (
        Path(kubernetes_validate.__file__).parent
        / "kubernetes-json-schema"
        / f"v{major_minor}.0-local-strict"
        / "_definitions.json"
    )
    definitions = Resource.from_contents(json.loads(path.read_text()))
    return definitions @ Registry()


@cache
def load(api_version: str, kind: str) -> dict[str, Any] | None:
    """The JSON Schema for a custom resource, or None when none is vendored."""
    path = schema_path(api_version, kind)
    if not path.exists():
        return None
    return to_json_schema(json.loads(path.read_text()), f"{kind}")


def validate(doc: dict[str, Any], kube_version: str) -> list[str] | None:
    """Every violation (path: message); None when no schema is vendored for the kind."""
    schema = load(doc["apiVersion"], doc["kind"])
    if schema is None:
        return None
    validator = _validator_class()(
        schema, registry=_registry(kube_version), format_checker=_format_checker()
    )
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:300]}"
        for error in errors
    ]


def vendored() -> list[tuple[str, str, str]]:
    """(group, kind, version) of every vendored schema."""
    found = []
    for path in sorted(SCHEMAS.glob("*/*.json")):
        kind, _, version = path.stem.rpartition("_")
        found.append((path.parent.name, kind, version))
    return found
