"""cluster/: every YAML parses, and the clusters agree with the jobs they run.

Each entrypoint (the RayJobs, cluster/README.md's commands) must name a job in `jobs/` and parse
with that job's own tyro config (a misspelt flag fails here, not mid-run), and its GPU request must
fit the GPU group it runs on: one train worker per pod or node owning all its GPUs, no more workers
than the group's maximum, a global batch that splits over every worker count the run may have,
relabel's actors packing whole onto the pods; the value model's initial weights are given. The
Serve apps build their `AppConfig` from their args, serve the policy the RayJob trains from a path
the pods mount with a key they set, and the RayService's is cluster/serve.yaml's. The launcher's
containers see the shared mount, spot pods drain within what the node gives them, the image builds.
One Ray version everywhere. No Ray cluster is started.
"""

from __future__ import annotations

import ast
import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

import cluster_commands as commands
import cluster_manifests as manifests
from cluster_manifests import (ALL_YAML, API_VERSIONS, CLUSTER, GKE_SPOT_USER_POD_S, IMAGE_TAG, KUBE_YAML, KUBERAY, LAUNCHER_YAML,
                               PROJECT_README, README, ROOT, SERVE_YAML, SPOT_SELECTORS, STAGES, GpuTarget)  # fmt: skip

def _policy_runs() -> set[tuple[str, str]]:
    """(run dir, config) of every jobs.train_policy RayJob."""
    runs = set()
    for path, doc in manifests.kube_docs("RayJob"):
        job, args = commands.entrypoint(doc["spec"]["entrypoint"])
        if job == "train_policy":
            config = commands.parse(job, args, manifests.relative(path))
            runs.add((config.run_dir.rstrip("/"), config.config))
    return runs


def _check_served(app: dict[str, Any], cluster: dict[str, Any], where: str) -> Any:
    """A Serve app against the cluster it is deployed to: every worker pod (where its replicas land) mounts the
    checkpoint and sets the API-key variable; returns its AppConfig."""
    from recap_ray.configs import registry
    from recap_ray.serve import app_config

    _import_target(app["import_path"], where)
    config = app_config.AppConfig.from_args(app.get("args", {}))  # unknown or bad args raise here
    registry.get(config.config)
    assert config.config.endswith("_infer"), f"{where}: serve config {config.config!r} is not an _infer config"
    for group in cluster["workerGroupSpecs"]:
        g = group["groupName"]
        if "://" not in config.checkpoint:
            mounts = manifests.mount_paths(group)
            assert config.checkpoint.startswith(tuple(mounts)), f"{where}: checkpoint {config.checkpoint} is not on {g}'s mounts {mounts}"
        if config.api_key_env is not None:
            assert config.api_key_env in manifests.env_names(group), f"{where}: api_key_env {config.api_key_env} is not set on {g}'s pods"
    return config


def _import_target(import_path: str, where: str) -> None:
    """`module:attr` names a module under actors/ that defines attr at top level."""
    module, _, attr = import_path.partition(":")
    assert module.startswith("actors.") and attr, f"{where}: import_path {import_path!r} should be actors.<module>:<builder>"
    source = ROOT / Path(*module.split(".")).with_suffix(".py")
    assert source.is_file(), f"{where}: import_path {import_path!r}: no {manifests.relative(source)}"
    defined = {n.name for n in ast.parse(source.read_text()).body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert attr in defined, f"{where}: {manifests.relative(source)} defines no {attr!r}"


def _serve_apps(text: str, where: str) -> list[dict[str, Any]]:
    apps = (yaml.safe_load(text) or {}).get("applications")
    assert isinstance(apps, list) and apps, f"{where}: no Serve applications"
    return apps


def test_cluster_folder_has_what_the_issue_asks():
    kinds = {d.get("kind") for p in KUBE_YAML for d in manifests.docs(p)}
    assert {"RayCluster", "RayJob", "RayService"} <= kinds, f"kinds under {manifests.relative(KUBERAY)}: {kinds}"
    assert LAUNCHER_YAML and README.is_file() and (CLUSTER / "Dockerfile").is_file()


@pytest.mark.parametrize("path", ALL_YAML, ids=manifests.relative)
def test_yaml_parses(path):
    for doc in manifests.docs(path):
        if path.is_relative_to(KUBERAY):
            kind = doc.get("kind")
            assert kind in API_VERSIONS, f"{manifests.relative(path)}: unexpected kind {kind!r}"
            assert doc.get("apiVersion") == API_VERSIONS[kind], f"{manifests.relative(path)}: {kind} apiVersion {doc.get('apiVersion')!r}"
            assert doc.get("metadata", {}).get("name"), f"{manifests.relative(path)}: {kind} without metadata.name"


def test_ray_version_is_one_and_the_projects():
    """rayVersion, image tags, the Dockerfile's base and the launcher's image name one Ray version."""
    versions, images = {}, {}
    for label, spec in manifests.cluster_specs():
        versions[label] = spec["rayVersion"]
        for t in [spec["headGroupSpec"]["template"], *(g["template"] for g in spec.get("workerGroupSpecs", []))]:
            images.update({f"{label}:{c['name']}": c["image"] for c in t["spec"]["containers"]})
    images.update({manifests.relative(p): yaml.safe_load(p.read_text())["docker"]["image"] for p in LAUNCHER_YAML})
    images["cluster/Dockerfile"] = re.search(r"^FROM\s+(\S+)", (CLUSTER / "Dockerfile").read_text(), flags=re.M).group(1)
    assert images["cluster/Dockerfile"].startswith("rayproject/ray:"), "cluster/Dockerfile should build on rayproject/ray"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ray_spec = SpecifierSet(next(re.sub(r"^ray(\[[^]]*\])?", "", d) for d in project["dependencies"] if re.match(r"ray\b", d)))
    for where, image in images.items():
        m = IMAGE_TAG.search(image)
        assert m, f"{where}: image {image!r} is not tagged <ray version>-py3XX-<gpu|cpu|cuXXX>"
        versions[where] = m["ray"]
        python = Version(f"{m['py']}.{m['pyminor']}")
        assert python in SpecifierSet(project["requires-python"]), f"{where}: {image} has Python {python}"
    assert len(set(versions.values())) == 1, f"Ray versions differ: {versions}"
    version, installed = Version(next(iter(versions.values()))), Version(ray.__version__)
    assert version in ray_spec, f"cluster Ray {version} outside pyproject's ray{ray_spec}"
    assert version.release[:2] == installed.release[:2], f"cluster/ pins Ray {version}, this environment has {installed}: bump them together"


@pytest.mark.parametrize("label,spec", manifests.cluster_specs(), ids=[label for label, _ in manifests.cluster_specs()])
def test_raycluster_spec(label, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", f"{label}: the head must have num-cpus 0 (drivers only)"
    assert spec.get("enableInTreeAutoscaling") is True, f"{label}: in-tree autoscaling off"
    assert spec.get("autoscalerOptions", {}).get("version") == "v2", f"{label}: autoscalerOptions.version should be v2"
    assert spec.get("authOptions", {}).get("mode") == "token", f"{label}: token auth off"
    assert Version(spec["rayVersion"]) >= Version("2.52.0"), f"{label}: KubeRay token auth needs Ray >= 2.52"
    pvcs = {d["metadata"]["name"] for _, d in manifests.kube_docs("PersistentVolumeClaim")}
    shared = None
    for name, template in {"head": head["template"], **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}}.items():
        pod = template["spec"]
        # KubeRay rejects both switches for autoscaler v2, and pods restarting in place under v2
        assert "RAY_enable_autoscaler_v2" not in {e["name"] for c in pod["containers"] for e in c.get("env", [])}, f"{label}/{name}"
        assert pod.get("restartPolicy", "Never") == "Never", f"{label}/{name}: restartPolicy must be Never or unset (autoscaler v2)"
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: claims[m["name"]] for m in manifests.ray_container(template).get("volumeMounts", []) if m["name"] in claims}
        assert mounts, f"{label}/{name}: no shared volume mounted (stages hand each other paths)"
        assert shared in (None, mounts), f"{label}/{name}: shared mounts {mounts} differ from the other pods' {shared}"
        assert set(mounts.values()) <= pvcs, f"{label}/{name}: claims {mounts} not all defined under {manifests.relative(KUBERAY)}"
        shared = mounts
    assert manifests.kube_gpu_targets(spec, label), f"{label}: no GPU worker group"
    for group in spec["workerGroupSpecs"]:
        g, lo, hi = group["groupName"], int(group["minReplicas"]), int(group["maxReplicas"])
        assert 0 <= lo <= int(group.get("replicas", lo)) <= hi and hi >= 1, f"{label}/{g}: need 0 <= min <= replicas <= max, max >= 1"
        if manifests.pod_gpus(group) > 0:
            requests = manifests.ray_container(group["template"]).get("resources", {}).get("requests", {})
            assert manifests.quantity(requests.get("nvidia.com/gpu", manifests.pod_gpus(group))) == manifests.pod_gpus(group), f"{label}/{g}: GPU request != limit"
            tolerations = group["template"]["spec"].get("tolerations", [])
            assert any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{label}/{g}: no toleration for the nvidia.com/gpu taint"


def test_raycluster_gpu_group_runs_on_spot():
    spot = []
    for path, doc in manifests.kube_docs("RayCluster"):
        for group in doc["spec"]["workerGroupSpecs"]:
            selected = {k: v for k, v in group["template"]["spec"].get("nodeSelector", {}).items() if k in SPOT_SELECTORS}
            if manifests.pod_gpus(group) > 0 and selected:
                assert all(SPOT_SELECTORS[k] == v for k, v in selected.items()), f"{manifests.relative(path)}: spot selector {selected}"
                assert int(group["minReplicas"]) == 0, f"{manifests.relative(path)}/{group['groupName']}: spot GPUs should scale from zero"
                spot.append(group["groupName"])
    assert spot, f"no RayCluster GPU worker group selects spot nodes ({sorted(SPOT_SELECTORS)})"


@pytest.mark.parametrize("label,spec", manifests.cluster_specs(), ids=[label for label, _ in manifests.cluster_specs()])
def test_spot_drain_fits_the_grace_period(label, spec):
    """A spot GPU pod's drain ends within its preStop hold and grace period; past the 15 s GKE gives user pods of
    a spot node by default, the file says that the node pool must extend it."""
    text = (ROOT / label.partition(":")[0]).read_text()
    for group in spec["workerGroupSpecs"]:
        pod, where = group["template"]["spec"], f"{label}/{group['groupName']}"
        if manifests.pod_gpus(group) == 0 or not set(pod.get("nodeSelector", {})) & set(SPOT_SELECTORS):
            continue
        grace = pod.get("terminationGracePeriodSeconds", 30)  # Kubernetes' default
        env = {e["name"]: e.get("value") for e in manifests.ray_container(group["template"]).get("env", [])}
        drain = float(env.get("RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S", 0))
        pre_stop = " ".join(manifests.ray_container(group["template"]).get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", []))
        hold = float(m[1]) if (m := re.search(r"\bsleep (\d+)", pre_stop)) else 0.0
        assert drain <= hold <= grace and drain < grace, f"{where}: drain {drain:g} s, preStop hold {hold:g} s, grace period {grace} s"
        if "cloud.google.com/gke-spot" in pod.get("nodeSelector", {}) and grace > GKE_SPOT_USER_POD_S:
            assert f"{GKE_SPOT_USER_POD_S} s" in text and "graceful termination period" in text, (
                f"{where}: a {grace} s grace period on GKE spot nodes, which give user pods {GKE_SPOT_USER_POD_S} s unless the "
                "node pool's graceful termination period is extended: say so"
            )


@pytest.mark.parametrize("path,doc", manifests.kube_docs("RayJob"), ids=manifests.ids("RayJob"))
def test_rayjob(path, doc):
    spec, where = doc["spec"], manifests.relative(path)
    if "clusterSelector" in spec:
        name = spec["clusterSelector"]["ray.io/cluster"]
        found = [d["spec"] for _, d in manifests.kube_docs("RayCluster") if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{where}: clusterSelector names RayCluster {name!r}; {len(found)} defined under {manifests.relative(KUBERAY)}"
        cluster, label = found[0], f"RayCluster {name}"
        for field in ("backoffLimit", "suspend", "rayClusterSpec"):
            assert field not in spec, f"{where}: KubeRay rejects {field} with clusterSelector"
    else:
        cluster, label = spec["rayClusterSpec"], f"{where}:rayClusterSpec"
    assert isinstance(yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}, dict), f"{where}: runtimeEnvYAML is not a mapping"
    job, args = commands.entrypoint(spec["entrypoint"])
    config = commands.parse(job, args, where)
    commands.check_config_name(job, config, where)
    assert getattr(config, "gpus_per_worker", 0) or getattr(config, "gpus_per_actor", None), f"{where}: jobs.{job} asks for no GPUs"
    targets = manifests.kube_gpu_targets(cluster, label)
    assert targets, f"{where}: {label} has no GPU group"
    for target in targets:
        commands.check_fits(config, target, where)
    gpu_groups = [g for g in cluster["workerGroupSpecs"] if manifests.pod_gpus(g) > 0]
    env = set((yaml.safe_load(spec.get("runtimeEnvYAML", "")) or {}).get("env_vars", {})) | set.intersection(*map(manifests.env_names, gpu_groups))
    commands.check_init(job, config, env, where)
    mounts = manifests.mount_paths(cluster["headGroupSpec"])
    for p in (a for a in args if a.startswith("/")):
        assert p.startswith(tuple(mounts)), f"{where}: {p} is not on the shared mounts {mounts}"


def test_rayjobs_cover_the_gpu_stages():
    jobs = {commands.entrypoint(d["spec"]["entrypoint"])[0] for _, d in manifests.kube_docs("RayJob")}
    assert {"train_value", "relabel", "train_policy"} <= jobs, f"RayJobs run {sorted(jobs)}"


@pytest.mark.parametrize("path,doc", manifests.kube_docs("RayService"), ids=manifests.ids("RayService"))
def test_rayservice(path, doc):
    from jobs import serve as serve_job

    where, cluster = manifests.relative(path), doc["spec"]["rayClusterConfig"]
    targets = manifests.kube_gpu_targets(cluster, where)
    assert targets, f"{where}: no GPU group to serve on"
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):  # every node runs a Serve proxy
        values = {e["name"]: e.get("value") for e in manifests.ray_container(group["template"]).get("env", [])}
        wrong = {k: v for k, v in serve_job.RAY_ENV.items() if values.get(k) != v}
        assert not wrong, f"{where}: {group.get('groupName', 'head')} needs {wrong} in its env (jobs.serve.RAY_ENV)"
    for app in _serve_apps(doc["spec"]["serveConfigV2"], f"{where} serveConfigV2"):
        config = _check_served(app, cluster, where)
        for t in targets:
            assert config.num_gpus <= t.gpus, f"{where}: num_gpus {config.num_gpus} > {t.gpus:g} GPUs a pod of {t.label}"
            fits = int(t.gpus // config.num_gpus) * t.max_nodes if config.num_gpus else float("inf")
            assert config.model_autoscaling.max_replicas <= fits, f"{where}: model max_replicas exceed {fits} that fit {t.label}"


def test_rayservice_agrees_with_serve_yaml():
    """The RayService serves cluster/serve.yaml's applications: names, routes, import paths and every arg."""
    from recap_ray.serve import app_config

    if not SERVE_YAML.is_file():
        pytest.skip(f"{manifests.relative(SERVE_YAML)} is absent: nothing to compare the RayService's serveConfigV2 with")
    ours = _serve_apps(SERVE_YAML.read_text(), manifests.relative(SERVE_YAML))
    for path, doc in manifests.kube_docs("RayService"):
        theirs, pair = _serve_apps(doc["spec"]["serveConfigV2"], manifests.relative(path)), f"{manifests.relative(path)} and {manifests.relative(SERVE_YAML)}"
        assert len(theirs) == len(ours), f"{pair}: {len(theirs)} vs {len(ours)} applications"
        for a, b in zip(theirs, ours):
            assert {k: v for k, v in a.items() if k != "args"} == {k: v for k, v in b.items() if k != "args"}, f"{pair}: applications differ"
            args = [dataclasses.asdict(app_config.AppConfig.from_args(x.get("args", {}))) for x in (a, b)]
            differ = {k: (args[0][k], args[1][k]) for k in args[0] if args[0][k] != args[1][k]}
            assert not differ, f"{pair}: {a.get('name')} args differ (theirs, ours): {differ}"


def test_serve_yaml_serves_the_trained_policy_on_the_raycluster():
    """`serve deploy cluster/serve.yaml` on raycluster.yaml's cluster (cluster/README.md) loads the policy RayJob's run
    with the _infer twin of its config, from a path every worker pod mounts, with the API key its pods set."""
    if not SERVE_YAML.is_file():
        pytest.skip(f"{manifests.relative(SERVE_YAML)} is absent")
    runs = _policy_runs()
    for path, doc in manifests.kube_docs("RayCluster"):
        where = f"{manifests.relative(SERVE_YAML)} on {manifests.relative(path)}"
        for app in _serve_apps(SERVE_YAML.read_text(), manifests.relative(SERVE_YAML)):
            config = _check_served(app, doc["spec"], where)
            served = (config.checkpoint.rstrip("/"), config.config.removesuffix("_infer"))
            assert served in runs, f"{where}: serves {served}, not a policy RayJob's (run dir, config): {sorted(runs)}"


@pytest.mark.parametrize("path", LAUNCHER_YAML, ids=manifests.relative)
def test_launcher(path):
    from ray.autoscaler._private import util

    where, raw = manifests.relative(path), yaml.safe_load(path.read_text())
    util.validate_config(util.prepare_config(raw))  # Ray's own defaults merge and schema check, as `ray up` does
    types = raw["available_node_types"]
    assert types[raw["head_node_type"]].get("resources", {}).get("CPU") == 0, f"{where}: head should offer 0 CPUs (drivers only)"
    assert manifests.launcher_gpu_targets(path), f"{where}: no GPU node type"
    for name, t in types.items():
        if name == raw["head_node_type"]:
            continue
        assert 0 <= t.get("min_workers", 0) <= t["max_workers"] <= raw["max_workers"], f"{where}/{name}: min/max workers"
        node = t["node_config"]
        spot = node.get("InstanceMarketOptions", {}).get("MarketType") == "spot" or any(
            s.get("preemptible") or s.get("provisioningModel") == "SPOT" for s in node.get("scheduling", [])
        )
        assert spot or not t["resources"].get("GPU"), f"{where}/{name}: GPU node type is not spot/preemptible"
    assert "." in raw.get("file_mounts", {}).values(), f"{where}: the working directory is not synced to the nodes"
    assert any("recap-ray[gpu]" in c for c in raw.get("setup_commands", [])), f"{where}: setup does not install recap-ray[gpu]"
    assert any("RAY_AUTH_MODE=token" in c for c in raw["head_start_ray_commands"]), f"{where}: head starts without token auth"


@pytest.mark.parametrize("path", LAUNCHER_YAML, ids=manifests.relative)
def test_launcher_containers_see_the_shared_mounts(path):
    """Every /mnt/<dir> that cluster/README.md's commands and the launcher's commands use is mounted on the host
    (initialization_commands) and bind-mounted into the container, where the jobs run (Ray mounts only file_mounts)."""
    where, raw = manifests.relative(path), yaml.safe_load(path.read_text())
    launched = [c for key, cs in raw.items() if key.endswith("_commands") and key != "initialization_commands" for c in cs or []]
    used = set(re.findall(r"/mnt/[\w.-]+", "\n".join([*re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S), *launched])))
    assert used, f"{manifests.relative(README)} uses no /mnt path: nothing to check"
    binds = dict(re.findall(r"^(?:-v|--volume)[ =]([^:\s]+):([^:\s]+)", "\n".join(raw.get("docker", {}).get("run_options", [])), flags=re.M))
    for mount in sorted(used):
        assert binds.get(mount) == mount, f"{where}: docker.run_options do not bind-mount {mount} (have {binds})"
        host = [c for c in raw.get("initialization_commands", []) if re.search(rf"\bmount\b.*\s{re.escape(mount)}\b", c)]
        assert host, f"{where}: no initialization_command mounts {mount} on the host"


def test_dockerfile_workdir_belongs_to_ray():
    """`pip install .` runs as user ray and builds in the tree: WORKDIR alone would create the directory root-owned."""
    lines = [line.strip() for line in (CLUSTER / "Dockerfile").read_text().splitlines() if line.strip() and not line.lstrip().startswith("#")]
    at = next(i for i, line in enumerate(lines) if line.startswith("WORKDIR "))
    workdir = lines[at].split()[1]
    owned = [line for line in lines[:at] if line.startswith("RUN ") and re.search(rf"chown\s+(-R\s+)?ray(:\w+)?\s+{re.escape(workdir)}\b", line)]
    assert owned, f"cluster/Dockerfile: no RUN before WORKDIR {workdir} creates it owned by ray"


def test_readme_commands():
    """cluster/README.md's `python -m jobs.*` commands parse and fit every GPU group and node type."""
    blocks = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)).replace("\\\n", " ")
    lines = [line.split("#")[0].strip() for line in blocks.splitlines() if "python -m jobs." in line]
    jobs = {commands.entrypoint(c)[0] for c in lines}
    assert set(STAGES) <= jobs, f"{manifests.relative(README)} submits {sorted(jobs)}, missing {sorted(set(STAGES) - jobs)}"
    targets = [t for _, d in manifests.kube_docs("RayCluster") for t in manifests.kube_gpu_targets(d["spec"], d["metadata"]["name"])]
    targets += [t for p in LAUNCHER_YAML for t in manifests.launcher_gpu_targets(p)]
    for command in lines:
        job, args = commands.entrypoint(command)
        where = f"{manifests.relative(README)}: jobs.{job}"
        if command.startswith("ray job submit"):
            assert "--working-dir ." in command, f"{where}: submit with --working-dir ."
            assert "--entrypoint-num-gpus" not in command, f"{where}: the driver needs no GPU; workers ask for their own"
        config = commands.parse(job, args, where)
        commands.check_config_name(job, config, where)
        commands.check_init(job, config, commands.submit_env(command), where)
        for target in targets:
            commands.check_fits(config, target, where)


def test_round_example_trains():
    """README.md's round.yaml example parses, and its global batch splits over its GPUs for every training it runs."""
    from jobs import round as round_job

    where = manifests.relative(PROJECT_README)
    blocks = re.findall(r"`round\.yaml` holding.*?```yaml\n(.*?)```", PROJECT_README.read_text(), flags=re.S)
    assert len(blocks) == 1, f"{where}: expected one round.yaml example"
    raw = yaml.safe_load(blocks[0])
    rc = round_job.RoundConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    trained = [rc.policy_config, *([] if rc.skip_value else [rc.value_config]), *([rc.sft_config] if rc.sft_config else [])]
    if rc.gpus_per_worker:
        for name in trained:
            workers = range(rc.min_workers or rc.num_workers, rc.num_workers + 1)
            commands.check_batch(rc.batch_size, name, workers, rc.gpus_per_worker, 1, f"{where} round.yaml")


def test_checks_catch_the_mistakes_they_are_for():
    target, base = GpuTarget("gpu", 8, 88, 4), ["--dataset", "/d", "--config", "value", "--run-dir", "/r"]
    commands.check_fits(commands.parse("train_value", [*base, "--num-workers", "4", "--gpus-per-worker", "8"], "t"), target, "t")
    commands.check_fits(commands.parse("train_value", [*base, "--num-workers", "4", "--min-workers", "2", "--batch-size", "96", "--gpus-per-worker", "8"], "t"), target, "t")
    for bad in (["--num-workers", "5", "--gpus-per-worker", "8"], ["--num-workers", "2", "--gpus-per-worker", "4"],
                ["--num-workers", "4", "--min-workers", "3", "--gpus-per-worker", "8"]):  # batch 32 over 24 GPUs
        with pytest.raises(AssertionError):
            commands.check_fits(commands.parse("train_value", [*base, *bad], "t"), target, "t")
    commands.check_init("train_value", commands.parse("train_value", [*base, "--init", "/b"], "t"), set(), "t")
    commands.check_init("train_value", commands.parse("train_value", base, "t"), {"OPENPI_VLM_CKPT_DIR"}, "t")
    with pytest.raises(AssertionError, match="OPENPI_VLM_CKPT_DIR"):
        commands.check_init("train_value", commands.parse("train_value", base, "t"), {"JAX_COMPILATION_CACHE_DIR"}, "t")
    assert commands.submit_env("""ray job submit --runtime-env-json '{"env_vars": {"A": "1"}}' -- python -m jobs.x""") == {"A"}
    with pytest.raises(pytest.fail.Exception, match="num-worker"):
        commands.parse("train_value", [*base, "--num-worker", "2"], "t")
    relabel = ["--dataset", "/d", "--value-ckpt", "/c", "--output", "/o"]
    commands.check_fits(commands.parse("relabel", [*relabel, "--num-actors", "32", "--gpus-per-actor", "1"], "t"), target, "t")
    for bad in (["--num-actors", "33", "--gpus-per-actor", "1"], ["--num-actors", "2", "--gpus-per-actor", "3"]):
        with pytest.raises(AssertionError):
            commands.check_fits(commands.parse("relabel", [*relabel, *bad], "t"), target, "t")
    assert commands.entrypoint("ray job submit --working-dir . -- python -m jobs.prepare --input a") == ("prepare", ["--input", "a"])
