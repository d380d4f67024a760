"""Reading cluster/: its YAML documents, what one pod or node gives Ray, and where GPU work can land.

Shared by tests/test_cluster.py; nothing here starts a cluster.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
SERVE_YAML = CLUSTER / "serve.yaml"
README = CLUSTER / "README.md"
PROJECT_README = ROOT / "README.md"
ALL_YAML = sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))
KUBE_YAML = [p for p in ALL_YAML if p.is_relative_to(KUBERAY)]
LAUNCHER_YAML = [p for p in ALL_YAML if p.is_relative_to(CLUSTER / "launcher")]

API_VERSIONS = {"RayCluster": "ray.io/v1", "RayJob": "ray.io/v1", "RayService": "ray.io/v1", "PersistentVolumeClaim": "v1"}
# spot node labels: GKE, EKS managed node groups, Karpenter
SPOT_SELECTORS = {"cloud.google.com/gke-spot": "true", "eks.amazonaws.com/capacityType": "SPOT", "karpenter.sh/capacity-type": "spot"}
# what GKE's graceful node shutdown gives user pods of a spot node's 30 s notice, unless the node pool extends it
GKE_SPOT_USER_POD_S = 15
IMAGE_TAG = re.compile(r":(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<pyminor>\d+)-(gpu|cpu|cu\d+)$")
STAGES = ("prepare", "train_value", "relabel", "train_policy")


def relative(path: Path) -> str:
    """The path from the repository root, for messages and test ids."""
    return str(path.relative_to(ROOT))


def docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs), f"{relative(path)}: expected one or more YAML mappings"
    return docs


def kube_docs(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in KUBE_YAML for d in docs(p) if d.get("kind") == kind]


def ids(kind: str) -> list[str]:
    return [relative(p) for p, _ in kube_docs(kind)]


def quantity(value: Any) -> float:
    """A Kubernetes CPU or GPU quantity: 8, "8", "500m"."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def ray_container(template: dict[str, Any]) -> dict[str, Any]:
    """KubeRay runs Ray in the pod's first container."""
    return template["spec"]["containers"][0]


def per_pod(group: dict[str, Any], param: str, limit: str) -> float:
    """What Ray sees on one pod: the rayStartParams value if set, else the container limit."""
    from_limit = quantity(ray_container(group["template"]).get("resources", {}).get("limits", {}).get(limit, 0))
    if param in group.get("rayStartParams", {}):
        from_param = quantity(group["rayStartParams"][param])
        assert from_param == from_limit, f"{group.get('groupName', 'head')}: {param} {from_param:g}, {limit} limit {from_limit:g}"
        return from_param
    return from_limit


def pod_gpus(group: dict[str, Any]) -> float:
    return per_pod(group, "num-gpus", "nvidia.com/gpu")


def env_names(group: dict[str, Any]) -> set[str]:
    """Environment variables the group's Ray container sets."""
    return {e["name"] for e in ray_container(group["template"]).get("env", [])}


def mount_paths(group: dict[str, Any]) -> list[str]:
    """The group's Ray container's mount paths, each ending in `/`."""
    return [m["mountPath"].rstrip("/") + "/" for m in ray_container(group["template"]).get("volumeMounts", [])]


def cluster_specs() -> list[tuple[str, dict[str, Any]]]:
    """(label, RayCluster spec) of every cluster defined under cluster/kuberay, embedded ones too."""
    where = {"RayCluster": "spec", "RayService": "rayClusterConfig", "RayJob": "rayClusterSpec"}
    return [
        (f"{relative(p)}:{d['metadata']['name']}", d["spec"] if field == "spec" else d["spec"][field])
        for kind, field in where.items()
        for p, d in kube_docs(kind)
        if field == "spec" or field in d["spec"]
    ]


class GpuTarget(typing.NamedTuple):
    """Where GPU work lands: GPUs and CPUs of one pod or node, and the most pods or nodes."""

    label: str
    gpus: float
    cpus: float
    max_nodes: int


def kube_gpu_targets(spec: dict[str, Any], label: str) -> list[GpuTarget]:
    groups = [g for g in spec.get("workerGroupSpecs", []) if pod_gpus(g) > 0]
    return [GpuTarget(f"{label}/{g['groupName']}", pod_gpus(g), per_pod(g, "num-cpus", "cpu"), int(g["maxReplicas"])) for g in groups]


def launcher_gpu_targets(path: Path) -> list[GpuTarget]:
    types = yaml.safe_load(path.read_text())["available_node_types"]
    return [
        GpuTarget(f"{relative(path)}/{name}", float(t["resources"]["GPU"]), float(t["resources"].get("CPU", 0)), int(t["max_workers"]))
        for name, t in types.items()
        if t.get("resources", {}).get("GPU", 0) > 0
    ]
