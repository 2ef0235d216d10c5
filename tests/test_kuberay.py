"""Issue 30, item 3: genbench on Kubernetes with KubeRay (k8s/, docs/kubernetes.md), checked
offline (no cluster, no network):

- every object in k8s/*.yaml validates against its schema, as `kubectl apply` would have the API
  server check it: RayCluster and RayJob against KubeRay's own CRD schemas (v1.7.0, kept in
  tests/schemas/kuberay-v1.7.0/ with their source), the plain objects against hand-kept schemas of
  Kubernetes' Service, PersistentVolumeClaim, Deployment and NetworkPolicy (the Deployment's
  pod template against the PodTemplateSpec schema inside KubeRay's CRD, which is Kubernetes'
  own). Unknown fields are errors, as under kubectl's default strict field validation;
- the properties the deployment relies on (`manifest_problems`): Ray token auth from a Secret,
  GPU groups that scale from zero, MLflow inside the cluster only, a ReadWriteMany volume at one
  path on the head and every worker that is the jobs' --storage-path, no secret written in the
  files, resource limits, non-root containers, a pinned image;
- each of those checks, and the schema check, rejects a manifest broken on purpose;
- the MLflow pod's start-up script, run on this machine (slow): it demands the login.
"""
from __future__ import annotations

import base64
import copy
import gzip
import importlib.metadata
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft7Validator

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
KUBERAY = REPO / "tests" / "schemas" / "kuberay-v1.7.0"  # not tests/data: .gitignore has data/
TOKEN_SECRET_KEY = "auth_token"     # the key KubeRay reads a token Secret's value from
MIN_RAY_FOR_TOKEN_AUTH = (2, 52)


# --- loading ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _parsed() -> tuple[dict, ...]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    objects = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=loader):
            if doc:
                objects.append({**doc, "_file": path.name})
    return tuple(objects)


def load_manifests() -> list[dict]:
    """Every object of every k8s/*.yaml, each tagged with its file (`_file`, not sent); a fresh
    copy, which a test may break."""
    return copy.deepcopy(list(_parsed()))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o.get("kind") == kind]


@pytest.fixture
def manifests() -> list[dict]:
    return load_manifests()


# --- schemas ------------------------------------------------------------------------------------
def strict(schema):
    """The schema with unknown fields rejected: what the API server's strict field validation
    (kubectl's default) does, where JSON Schema would let them through."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=None)
def crd_schema(name: str) -> dict:
    with gzip.open(KUBERAY / f"ray.io_{name}.v1.schema.json.gz") as f:
        return json.load(f)


DNS_LABEL = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
OBJECT_META = {"type": "object", "required": ["name"],
               "properties": {"name": DNS_LABEL, "namespace": DNS_LABEL, "labels": STRING_MAP,
                              "annotations": STRING_MAP}}
QUANTITY = {"anyOf": [{"type": "integer"}, {
    "type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"}]}
LABEL_SELECTOR = {"type": "object", "properties": {
    "matchLabels": STRING_MAP,
    "matchExpressions": {"type": "array", "items": {
        "type": "object", "required": ["key", "operator"], "properties": {
            "key": {"type": "string"},
            "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
            "values": {"type": "array", "items": {"type": "string"}}}}}}}
INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}


def top(api_version: str, kind: str, spec: dict) -> dict:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": OBJECT_META, "spec": spec}}


def core_schemas() -> dict[str, dict]:
    """Kubernetes' own objects, the fields of their v1 API that k8s/ may use (kept by hand from
    the API reference, for k8s.io/api v0.33): Service, PVC, Deployment, NetworkPolicy."""
    pod_template = crd_schema("rayclusters")["properties"]["spec"]["properties"][
        "headGroupSpec"]["properties"]["template"]
    return {
        "Service": top("v1", "Service", {"type": "object", "required": ["ports"], "properties": {
            "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
            "selector": STRING_MAP,
            "clusterIP": {"type": "string"},
            "ports": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["port"], "properties": {
                    "name": DNS_LABEL, "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                    "targetPort": INT_OR_STRING, "nodePort": {"type": "integer"},
                    "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                    "appProtocol": {"type": "string"}}}}}}),
        "PersistentVolumeClaim": top("v1", "PersistentVolumeClaim", {
            "type": "object", "required": ["accessModes", "resources"], "properties": {
                "accessModes": {"type": "array", "minItems": 1, "items": {"enum": [
                    "ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]}},
                "storageClassName": {"type": "string"},
                "volumeMode": {"enum": ["Filesystem", "Block"]},
                "resources": {"type": "object", "required": ["requests"], "properties": {
                    "requests": {"type": "object", "required": ["storage"],
                                 "properties": {"storage": QUANTITY}},
                    "limits": {"type": "object", "properties": {"storage": QUANTITY}}}}}}),
        "Deployment": top("apps/v1", "Deployment", {
            "type": "object", "required": ["selector", "template"], "properties": {
                "replicas": {"type": "integer", "minimum": 0},
                "selector": LABEL_SELECTOR,
                "strategy": {"type": "object", "properties": {
                    "type": {"enum": ["Recreate", "RollingUpdate"]},
                    "rollingUpdate": {"type": "object", "properties": {
                        "maxSurge": INT_OR_STRING, "maxUnavailable": INT_OR_STRING}}}},
                "revisionHistoryLimit": {"type": "integer"},
                "template": pod_template}}),
        "NetworkPolicy": top("networking.k8s.io/v1", "NetworkPolicy", {
            "type": "object", "required": ["podSelector"], "properties": {
                "podSelector": LABEL_SELECTOR,
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {"type": "array", "items": {"type": "object", "properties": {
                    "from": {"type": "array", "items": {"type": "object", "properties": {
                        "podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR}}},
                    "ports": {"type": "array", "items": {"type": "object", "properties": {
                        "port": INT_OR_STRING,
                        "protocol": {"enum": ["TCP", "UDP", "SCTP"]}}}}}}}}}),
    }


@lru_cache(maxsize=None)
def validators() -> dict[str, Draft7Validator]:
    schemas = dict(core_schemas())
    for kind, name in (("RayCluster", "rayclusters"), ("RayJob", "rayjobs")):
        schema = copy.deepcopy(crd_schema(name))
        schema["properties"]["metadata"] = OBJECT_META  # the API server checks it as ObjectMeta
        schema["required"] = ["apiVersion", "kind", "metadata", "spec"]
        schemas[kind] = schema
    return {kind: Draft7Validator(strict(s)) for kind, s in schemas.items()}


def schema_errors(obj: dict) -> list[str]:
    """Why the API server would refuse this object ([] when it would take it)."""
    body = {k: v for k, v in obj.items() if k != "_file"}
    validator = validators().get(body.get("kind"))
    if validator is None:
        return [f"{obj.get('_file')}: no schema for kind {body.get('kind')!r}"]
    return [f"{obj.get('_file')}: {'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(body)]


# --- the deployment's properties ----------------------------------------------------------------
def ray_cluster_specs(objects) -> list[tuple[str, dict]]:
    specs = [(f"RayCluster {o['metadata']['name']}", o["spec"])
             for o in of_kind(objects, "RayCluster")]
    specs += [(f"RayJob {o['metadata']['name']}", o["spec"]["rayClusterSpec"])
              for o in of_kind(objects, "RayJob") if "rayClusterSpec" in o["spec"]]
    return specs


def pod_specs(objects) -> list[tuple[str, dict]]:
    """(where, pod spec) of every pod the manifests make."""
    pods = []
    for where, spec in ray_cluster_specs(objects):
        pods.append((f"{where} head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [(f"{where} group {g['groupName']}", g["template"]["spec"])
                 for g in spec.get("workerGroupSpecs", [])]
    for job in of_kind(objects, "RayJob"):
        if "submitterPodTemplate" in job["spec"]:
            pods.append((f"RayJob {job['metadata']['name']} submitter",
                         job["spec"]["submitterPodTemplate"]["spec"]))
    pods += [(f"Deployment {d['metadata']['name']}", d["spec"]["template"]["spec"])
             for d in of_kind(objects, "Deployment")]
    return pods


def walk(node):
    """Every (key, value) pair in a nested structure (key None for list items)."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield None, v
            yield from walk(v)


def mount_of_claim(pod: dict, claim: str) -> set[str]:
    """Where each container of the pod mounts the PVC `claim` (a set: one path expected)."""
    names = {v["name"] for v in pod.get("volumes", [])
             if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
    return {m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", [])
            if m["name"] in names}


def storage_path_of(entrypoint: str) -> str | None:
    words = shlex.split(entrypoint.replace("'", " "))
    for i, word in enumerate(words):
        if word == "--storage-path" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--storage-path="):
            return word.split("=", 1)[1]
    return None


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def manifest_problems(objects: list[dict]) -> list[str]:
    """What in the manifests breaks the deployment's promises ([] when nothing does)."""
    problems = []
    clusters = ray_cluster_specs(objects)
    if not of_kind(objects, "RayCluster") or not of_kind(objects, "RayJob"):
        problems.append("need a RayCluster (interactive) and a RayJob (bench)")

    # Token authentication, its token from a Secret.
    secret_names = set()
    for where, spec in clusters:
        auth = spec.get("authOptions") or {}
        if auth.get("mode") != "token":
            problems.append(f"{where}: authOptions.mode must be token")
        if not auth.get("secretName"):
            problems.append(f"{where}: authOptions.secretName must name the token's Secret")
        secret_names.add(auth.get("secretName"))
        if version_tuple(spec.get("rayVersion", "0")) < MIN_RAY_FOR_TOKEN_AUTH:
            problems.append(f"{where}: rayVersion must be >= 2.52 for token authentication")

        # GPU groups from zero, the autoscaler on.
        if spec.get("enableInTreeAutoscaling") is not True:
            problems.append(f"{where}: enableInTreeAutoscaling must be true")
        groups = spec.get("workerGroupSpecs", [])
        gpu_groups = [g for g in groups
                      if any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
                             for c in g["template"]["spec"]["containers"])]
        if not gpu_groups:
            problems.append(f"{where}: no GPU worker group")
        for g in gpu_groups:
            if g.get("minReplicas") != 0 or g.get("replicas", 0) != 0:
                problems.append(f"{where}: GPU group {g['groupName']} must start at 0 "
                                f"(minReplicas and replicas 0)")
            if g.get("maxReplicas", 0) < 1:
                problems.append(f"{where}: GPU group {g['groupName']} needs maxReplicas >= 1")
        if spec["headGroupSpec"].get("serviceType", "ClusterIP") != "ClusterIP":
            problems.append(f"{where}: the head's Service must be ClusterIP")

        # One ReadWriteMany claim at the same path on the head and every worker.
        rwx = {c["metadata"]["name"] for c in of_kind(objects, "PersistentVolumeClaim")
               if "ReadWriteMany" in c["spec"]["accessModes"]}
        pods = [spec["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in groups]
        shared = {claim: [mount_of_claim(p, claim) for p in pods] for claim in rwx}
        at_one_path = {claim: next(iter(paths[0])) for claim, paths in shared.items()
                       if all(len(p) == 1 for p in paths) and len(set(map(frozenset, paths))) == 1}
        if not at_one_path:
            problems.append(f"{where}: needs a ReadWriteMany PVC mounted at one path on the head "
                            f"and on every worker")
        for job in of_kind(objects, "RayJob"):
            if job["spec"].get("rayClusterSpec") is not spec:
                continue
            path = storage_path_of(job["spec"].get("entrypoint", ""))
            if path is None or not any(path == m or path.startswith(m.rstrip("/") + "/")
                                       for m in at_one_path.values()):
                problems.append(f"{where}: --storage-path ({path}) must lie on the shared "
                                f"ReadWriteMany volume ({sorted(at_one_path.values())})")

    # MLflow: a ClusterIP Service, nothing exposed.
    services = of_kind(objects, "Service")
    if not any("mlflow" in s["metadata"]["name"] for s in services):
        problems.append("no MLflow Service")
    for s in services:
        if s["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append(f"Service {s['metadata']['name']}: type must be ClusterIP "
                            f"(not exposed)")
    for o in objects:
        if o.get("kind") in ("Ingress", "Gateway", "HTTPRoute", "Route"):
            problems.append(f"{o['kind']} {o['metadata']['name']}: nothing may be exposed")

    # No secret in the files: no Secret objects, sensitive env vars only from the token Secret.
    for o in of_kind(objects, "Secret"):
        problems.append(f"Secret {o['metadata']['name']} in {o['_file']}: make it with kubectl, "
                        f"never commit it")
    for where, pod in pod_specs(objects):
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for env in c.get("env", []):
                if re.search(r"TOKEN|PASSWORD|SECRET|KEY", env["name"]):
                    ref = env.get("valueFrom", {}).get("secretKeyRef")
                    if "value" in env or not ref:
                        problems.append(f"{where}: {env['name']} must come from a Secret")
                    elif ref["key"] != TOKEN_SECRET_KEY or ref["name"] not in secret_names:
                        problems.append(f"{where}: {env['name']} from {ref['name']}/{ref['key']}, "
                                        f"not the cluster's token Secret")
                if env["name"] == "RAY_AUTH_MODE" and env.get("value") != "token":
                    problems.append(f"{where}: RAY_AUTH_MODE must stay token")
    for o in objects:
        for _, value in walk(o):
            # a hex token (not an image digest), or a password given a value (not a format's %s)
            if isinstance(value, str) and re.search(
                    r"(?<!sha256:)\b[0-9a-f]{32,}\b|password\s*[:=]\s*(?!%s)\w", value, re.I):
                problems.append(f"{o['_file']}: a literal secret? {value[:40]!r}")

    # Every container: limits, non-root, no escalation, a pinned image.
    for where, pod in pod_specs(objects):
        pod_ctx = pod.get("securityContext", {})
        for c in pod.get("containers", []):
            ctx = c.get("securityContext", {})
            name = f"{where} container {c['name']}"
            limits = c.get("resources", {}).get("limits", {})
            if not {"cpu", "memory"} <= set(limits) or not c.get("resources", {}).get("requests"):
                problems.append(f"{name}: needs requests and cpu/memory limits")
            if not ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot")):
                problems.append(f"{name}: must run as non-root (runAsNonRoot)")
            if ctx.get("runAsUser", pod_ctx.get("runAsUser", 1)) == 0:
                problems.append(f"{name}: runAsUser 0 is root")
            if ctx.get("allowPrivilegeEscalation") is not False or ctx.get("privileged"):
                problems.append(f"{name}: allowPrivilegeEscalation must be false")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                problems.append(f"{name}: must drop ALL capabilities")
            if not image_pinned(c.get("image", "")):
                problems.append(f"{name}: image {c.get('image')!r} must be pinned by digest or "
                                f"a fixed version tag (not latest)")
    return problems


def image_pinned(image: str) -> bool:
    if re.search(r"@sha256:[0-9a-f]{64}$", image):
        return True
    tag = image.rpartition("/")[2].partition(":")[2]
    return bool(re.fullmatch(r"v?\d+\.\d+\.\d+[-.\w]*", tag))


# --- the tests ----------------------------------------------------------------------------------
def test_every_manifest_validates_against_its_schema(manifests):
    kinds = sorted(o["kind"] for o in manifests)
    assert kinds == ["Deployment", "NetworkPolicy", "PersistentVolumeClaim",
                     "PersistentVolumeClaim", "RayCluster", "RayJob", "Service"]
    errors = [e for o in manifests for e in schema_errors(o)]
    assert errors == []


def test_the_manifests_keep_their_promises(manifests):
    assert manifest_problems(manifests) == []


def test_the_rayjob_runs_the_same_cluster_as_the_raycluster(manifests):
    (cluster,), (job,) = of_kind(manifests, "RayCluster"), of_kind(manifests, "RayJob")
    assert job["spec"]["rayClusterSpec"] == cluster["spec"]
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert re.search(r"\bgenbench (bench|train)\b", job["spec"]["entrypoint"])


def test_ray_is_the_release_genbench_is_tested_with(manifests):
    """rayVersion, the image's base and its pip pin: one Ray, the one in this environment."""
    ray_version = importlib.metadata.version("ray")
    (cluster,) = of_kind(manifests, "RayCluster")
    dockerfile = (K8S / "Dockerfile").read_text()
    assert cluster["spec"]["rayVersion"] == ray_version
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray_version)}-py311-gpu\b",
                     dockerfile, re.M)
    assert f'"ray[default,train,tune]=={ray_version}"' in dockerfile
    images = {c["image"] for _, pod in pod_specs(manifests) for c in pod["containers"]}
    assert len(images) == 1  # one image, pinned in one place to change


def mutate(objects, kind, change):
    """A deep copy of the manifests with `change` applied to the first object of `kind` (to the
    list itself when kind is None)."""
    objects = copy.deepcopy(objects)
    change(of_kind(objects, kind)[0] if kind else objects)
    return objects


SCHEMA_BREAKS = {
    "a misspelt field": ("RayCluster", lambda o: o["spec"]["workerGroupSpecs"][0].update(
        minReplica=0)),
    "an unknown auth mode": ("RayCluster", lambda o: o["spec"]["authOptions"].update(
        mode="tokens")),
    "replicas as text": ("RayJob", lambda o: o["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
                         .update(maxReplicas="8")),
    "a bad quantity": ("RayCluster", lambda o: o["spec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["resources"]["limits"].update(memory="16 GB")),
    "a pod field misplaced": ("Deployment", lambda o: o["spec"]["template"]["spec"].update(
        runAsNonRoot=True)),
    "an unknown access mode": ("PersistentVolumeClaim", lambda o: o["spec"].update(
        accessModes=["ReadWriteAll"])),
    "a Service without ports": ("Service", lambda o: o["spec"].pop("ports")),
}


@pytest.mark.parametrize("why", SCHEMA_BREAKS)
def test_the_schema_check_rejects_a_broken_manifest(manifests, why):
    kind, change = SCHEMA_BREAKS[why]
    broken = mutate(manifests, kind, change)
    assert [e for o in of_kind(broken, kind) for e in schema_errors(o)], why


def head_env(o):
    return o["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]


def worker(o, i=0):
    return o["spec"]["workerGroupSpecs"][i]


PROPERTY_BREAKS = {
    "token auth off": ("RayCluster", lambda o: o["spec"]["authOptions"].update(mode="disabled"),
                       "authOptions.mode must be token"),
    "no authOptions": ("RayJob", lambda o: o["spec"]["rayClusterSpec"].pop("authOptions"),
                       "authOptions.mode must be token"),
    "Ray too old for tokens": ("RayCluster", lambda o: o["spec"].update(rayVersion="2.46.0"),
                               ">= 2.52"),
    "auth mode overridden": ("RayCluster", lambda o: head_env(o).append(
        {"name": "RAY_AUTH_MODE", "value": "disabled"}), "RAY_AUTH_MODE must stay token"),
    "token written inline": ("RayCluster", lambda o: head_env(o).append(
        {"name": "RAY_AUTH_TOKEN", "value": "0123456789abcdef" * 4}), "must come from a Secret"),
    "password from another Secret": ("Deployment", lambda o: o["spec"]["template"]["spec"][
        "containers"][0]["env"][0]["valueFrom"]["secretKeyRef"].update(name="some-other"),
        "not the cluster's token Secret"),
    "a Secret committed": (None, lambda objs: objs.append(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "genbench-ray-token"},
         "data": {"auth_token": "c2VjcmV0"}, "_file": "secret.yaml"}), "never commit it"),
    "GPU group not from zero": ("RayCluster", lambda o: worker(o).update(minReplicas=1),
                                "must start at 0"),
    "autoscaler off": ("RayJob", lambda o: o["spec"]["rayClusterSpec"].update(
        enableInTreeAutoscaling=False), "enableInTreeAutoscaling"),
    "MLflow exposed": ("Service", lambda o: o["spec"].update(type="LoadBalancer"),
                       "must be ClusterIP"),
    "an Ingress": ("NetworkPolicy", lambda o: o.update(kind="Ingress"), "nothing may be exposed"),
    "head exposed": ("RayCluster", lambda o: o["spec"]["headGroupSpec"].update(
        serviceType="NodePort"), "head's Service must be ClusterIP"),
    "checkpoints volume RWO": ("PersistentVolumeClaim", lambda o: o["spec"].update(
        accessModes=["ReadWriteOnce"]), "ReadWriteMany PVC mounted"),
    "a worker mounts it elsewhere": ("RayCluster", lambda o: worker(o, 1)["template"]["spec"][
        "containers"][0]["volumeMounts"][0].update(mountPath="/data"), "ReadWriteMany PVC mounted"),
    "storage path off the volume": ("RayJob", lambda o: o["spec"].update(entrypoint=o["spec"][
        "entrypoint"].replace("/mnt/genbench/ray_results", "/tmp/ray_results")),
        "--storage-path (/tmp/ray_results)"),
    "no limits": ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0][
        "resources"].pop("limits"), "needs requests and cpu/memory limits"),
    "root": ("RayCluster", lambda o: worker(o)["template"]["spec"]["securityContext"].update(
        runAsNonRoot=False, runAsUser=0), "must run as non-root"),
    "escalation allowed": ("RayJob", lambda o: o["spec"]["submitterPodTemplate"]["spec"][
        "containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
        "allowPrivilegeEscalation must be false"),
    "image at latest": ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0]
                        .update(image="rayproject/ray:latest"), "must be pinned"),
}


@pytest.mark.parametrize("why", PROPERTY_BREAKS)
def test_the_property_check_rejects_a_broken_manifest(manifests, why):
    kind, change, expected = PROPERTY_BREAKS[why]
    problems = manifest_problems(mutate(manifests, kind, change))
    assert any(expected in p for p in problems), (why, problems)


def test_image_pinning_rules():
    assert image_pinned("rayproject/ray:2.60.0-py311-gpu")
    assert image_pinned("registry.example.com:5000/genbench@sha256:" + "a" * 64)
    for loose in ("rayproject/ray", "rayproject/ray:latest", "registry.example.com:5000/genbench",
                  "genbench:nightly"):
        assert not image_pinned(loose), loose


def test_the_secret_scan_spares_digests_and_formats_but_not_values(manifests):
    digest = "registry.example.com/genbench@sha256:" + "0f" * 32
    fine = mutate(manifests, "Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0]
                  .update(image=digest))
    assert manifest_problems(fine) == []
    leaked = mutate(manifests, "Deployment", lambda o: o["spec"]["template"]["spec"][
        "containers"][0]["args"].append("admin_password = hunter2"))
    assert any("a literal secret" in p for p in manifest_problems(leaked))


# --- the MLflow pod's start-up script, run here ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(url: str, auth: tuple[str, str] | None = None, host: str | None = None) -> int:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization",
                           "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    if host:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow  # an MLflow server start: ~10 s on 2 quiet cores, over a minute on busy ones
def test_the_mlflow_pod_serves_only_with_the_login(manifests, tmp_path):
    """k8s/mlflow.yaml's container command, run on this machine as written but for its paths
    (the volume and /tmp in tmp_path), its port (a free one) and its address (loopback): the
    server demands the `genbench` login with the token from the Secret's env var, and answers
    requests for the Service's host name."""
    (deployment,) = of_kind(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["/bin/bash", "-c"]
    port = str(_free_port())
    script = container["args"][0]
    for old, new in (("/mlflow", str(tmp_path / "volume")), ("/tmp", str(tmp_path / "tmp")),
                     ("5000", port), ("--host 0.0.0.0", "--host 127.0.0.1")):
        script = script.replace(old, new)
    (tmp_path / "volume").mkdir()
    (tmp_path / "tmp").mkdir()
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "MLFLOW_ADMIN_PASSWORD": token, "HOME": str(tmp_path)}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1"
    server = subprocess.Popen(["/bin/bash", "-c", script], env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not _up(url):
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the MLflow server did not start in 120 s"
            time.sleep(0.5)
        assert _status(url) == 401                                    # no login
        assert _status(url, ("genbench", "wrong")) == 401
        assert _status(url, ("genbench", token)) == 200
        assert _status(url, ("genbench", token), host=f"genbench-mlflow:{port}") == 200
        assert _status(url, ("genbench", token), host=f"attacker.example:{port}") in (400, 403)
        assert (tmp_path / "tmp" / "auth.ini").stat().st_mode & 0o077 == 0   # umask 077
        assert token not in " ".join(container["args"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True
