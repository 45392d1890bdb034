"""Kubernetes manifests: every composed object validates against the Kubernetes schemas (and
the ServiceMonitor against its structural schema), and the manifests agree with the services'
real config: ports, health service names, drain grace, metric names, labels and selectors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.tools import kustomize, manifests
from tests.deploy.conftest import CAPS, container, env_of, find, metric_names

K8S = manifests.K8S
Objects = dict[str, list[dict[str, Any]]]


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_overlay_objects_validate(overlays: Objects, overlay: str) -> None:
    problems = manifests.validate_all(overlays[overlay])
    assert problems == []
    kinds = {o["kind"] for o in overlays[overlay]}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "NetworkPolicy",
    } <= kinds


def test_standalone_jobs_validate() -> None:
    objects = manifests.standalone_objects()
    assert objects
    assert manifests.validate_all(objects) == []


def test_validation_rejects_broken_objects(overlays: Objects) -> None:
    deployment = copy.deepcopy(find(overlays["gpu"], "Deployment", "t2i"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # a typo
    assert any("readinesProbe" in p for p in manifests.validate_object(deployment))
    hpa = copy.deepcopy(find(overlays["gpu"], "HorizontalPodAutoscaler", "vl"))
    hpa["spec"]["maxReplicas"] = "many"
    assert manifests.validate_object(hpa)
    monitor = copy.deepcopy(find(overlays["gpu"], "ServiceMonitor", "vision"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    monitor["spec"]["endpoint"] = []
    problems = manifests.validate_object(monitor)
    assert any("interval" in p for p in problems)
    assert any("endpoint" in p and "unexpected" in p for p in problems)


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
@pytest.mark.parametrize("name", sorted(CAPS))
def test_capability_probes_ports_and_env_match_settings(
    overlays: Objects, overlay: str, name: str
) -> None:
    facts = CAPS[name]
    deployment = find(overlays[overlay], "Deployment", name)
    server = container(deployment, "server")
    env = env_of(server)
    assert env["MMSERVE_HOST"] == "0.0.0.0"
    assert int(env["MMSERVE_PORT"]) == facts.port
    assert int(env["MMSERVE_METRICS_PORT"]) == facts.metrics_port
    ports = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert ports == {"grpc": facts.port, "metrics": facts.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        # Native gRPC probes naming the capability's own health service.
        assert server[probe]["grpc"] == {"port": facts.port, "service": facts.service}


@pytest.mark.parametrize("name", sorted(CAPS))
def test_termination_grace_covers_prestop_and_drain(overlays: Objects, name: str) -> None:
    facts = CAPS[name]
    deployment = find(overlays["gpu"], "Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    server = container(deployment, "server")
    drain = float(env_of(server)["MMSERVE_DRAIN_GRACE_SECONDS"])
    assert drain == facts.drain_grace_seconds  # the runtime's default, said explicitly
    pre_stop = server["lifecycle"]["preStop"]["sleep"]["seconds"]
    # services/runtime/server.py: drain, then server.stop(grace=min(5, drain)).
    needed = pre_stop + drain + min(5.0, drain)
    assert pod["terminationGracePeriodSeconds"] >= needed
    liveness = server["livenessProbe"]
    # A draining pod says NOT_SERVING; liveness must not kill it before the drain ends.
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain + 5
    strategy = deployment["spec"]["strategy"]["rollingUpdate"]
    assert strategy["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"]  # the HPA owns it


def _security_problems(pod: dict[str, Any]) -> list[str]:
    problems = []
    if not pod.get("securityContext", {}).get("runAsNonRoot"):
        problems.append("pod runAsNonRoot")
    if pod.get("enableServiceLinks") is not False:
        problems.append("enableServiceLinks must be false (MMSERVE_* collisions)")
    mounted = {v["name"] for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        ctx = c.get("securityContext", {})
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{c['name']}: allowPrivilegeEscalation")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{c['name']}: readOnlyRootFilesystem")
        if ctx.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{c['name']}: capabilities drop ALL")
        if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
            problems.append(f"{c['name']}: no writable /tmp")
        for mount in c.get("volumeMounts", []):
            if mount["name"] not in mounted:
                problems.append(f"{c['name']}: mounts unknown volume {mount['name']}")
        if not c.get("resources", {}).get("requests"):
            problems.append(f"{c['name']}: no resource requests")
    return problems


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_every_pod_is_hardened(overlays: Objects, overlay: str) -> None:
    pods = [
        (o["metadata"]["name"], o["spec"]["template"]["spec"])
        for o in [*overlays[overlay], *manifests.standalone_objects()]
        if o["kind"] in ("Deployment", "Job")
    ]
    assert len(pods) == 6
    assert {name: _security_problems(pod) for name, pod in pods} == {n: [] for n, _ in pods}


def test_gpu_overlay_gives_each_capability_one_gpu(overlays: Objects) -> None:
    prefetch = manifests.standalone_objects()[0]
    prefetched = prefetch["spec"]["template"]["spec"]["containers"][0]["command"]
    for name in CAPS:
        deployment = find(overlays["gpu"], "Deployment", name)
        server = container(deployment, "server")
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(server)["MMSERVE_DEVICE"] == "cuda"
        model = env_of(server)["MMSERVE_MODEL"]
        assert model
        assert model in prefetched  # the prefetch job fetches what is served
        mounts = {m["mountPath"]: m for m in server["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True
        assert container(deployment, "server")["image"].endswith(":0.1.0-cuda")
    claim = find(overlays["gpu"], "PersistentVolumeClaim", "mmserve-models")
    volumes = prefetch["spec"]["template"]["spec"]["volumes"]
    assert claim["metadata"]["name"] in {v.get("persistentVolumeClaim", {}).get("claimName")
                                         for v in volumes}  # fmt: skip


def test_cpu_tiny_overlay_has_no_gpu_and_the_tiny_models(overlays: Objects) -> None:
    for name in CAPS:
        server = container(find(overlays["cpu-tiny"], "Deployment", name), "server")
        assert "nvidia.com/gpu" not in yaml.safe_dump(server)
        assert env_of(server)["MMSERVE_DEVICE"] == "cpu"
        assert env_of(server)["MMSERVE_MODEL"] == ""
        assert server["image"].endswith(":0.1.0-cpu")
        assert (
            find(overlays["cpu-tiny"], "HorizontalPodAutoscaler", name)["spec"]["maxReplicas"] == 2
        )


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_services_are_headless_and_select_their_pods(overlays: Objects, overlay: str) -> None:
    objects = overlays[overlay]
    for service in (o for o in objects if o["kind"] == "Service"):
        name = service["metadata"]["name"]
        deployment = find(objects, "Deployment", name)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        if name in CAPS:
            # Envoy's STRICT_DNS clusters resolve every pod only through a headless Service.
            assert service["spec"]["clusterIP"] == "None"
            ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
            assert ports == {"grpc": CAPS[name].port, "metrics": CAPS[name].metrics_port}
    # A Service named "mmserve" would inject MMSERVE_PORT into pods with service links on.
    assert all(o["metadata"]["name"] != "mmserve" for o in objects if o["kind"] == "Service")


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_pdbs_hpas_and_monitors_target_the_capabilities(overlays: Objects, overlay: str) -> None:
    objects = overlays[overlay]
    adapter = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert "mmserve_queue_depth" in metric_names()  # the runtime's real gauge
    for name in CAPS:
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        pdb = find(objects, "PodDisruptionBudget", name)
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        hpa = find(objects, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        (metric,) = hpa["spec"]["metrics"]
        assert metric["type"] == "Pods"
        assert metric["pods"]["metric"]["name"] in metric_names() & exposed
        monitor = find(objects, "ServiceMonitor", name)
        service = find(objects, "Service", name)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    for rule in adapter["rules"]["custom"]:
        assert rule["name"]["as"] in rule["seriesQuery"]


@pytest.mark.parametrize("overlay", sorted(manifests.OVERLAYS))
def test_network_policies_let_only_envoy_and_prometheus_in(overlays: Objects, overlay: str) -> None:
    objects = overlays[overlay]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    deny = find(objects, "NetworkPolicy", "default-deny-ingress")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    edge_labels = find(objects, "Deployment", "edge")["spec"]["template"]["metadata"]["labels"]
    for name, facts in CAPS.items():
        labels = find(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
        selecting = [
            p for p in policies
            if p["spec"]["podSelector"].get("matchLabels", {}).items() <= labels.items()
            and p["metadata"]["name"] != "default-deny-ingress"
        ]  # fmt: skip
        assert [p["metadata"]["name"] for p in selecting] == [name]
        rules = selecting[0]["spec"]["ingress"]
        by_port = {r["ports"][0]["port"]: r["from"] for r in rules}
        assert set(by_port) == {facts.port, facts.metrics_port}
        (grpc_from,) = by_port[facts.port]
        assert grpc_from["podSelector"]["matchLabels"].items() <= edge_labels.items()
        (metrics_from,) = by_port[facts.metrics_port]
        assert "namespaceSelector" in metrics_from
        assert metrics_from["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == (
            "prometheus"
        )


def test_edge_runs_envoy_with_the_rendered_config(overlays: Objects) -> None:
    rendered = (K8S / "base" / "edge" / "envoy.yaml").read_text()
    for overlay, objects in overlays.items():
        edge = find(objects, "Deployment", "edge")
        config_maps = [o for o in objects if o["kind"] == "ConfigMap"]
        (config_map,) = config_maps
        assert config_map["data"]["envoy.yaml"] == rendered, overlay
        volumes = {v["name"]: v for v in edge["spec"]["template"]["spec"]["volumes"]}
        assert volumes["envoy-config"]["configMap"]["name"] == config_map["metadata"]["name"]
        envoy = container(edge, "envoy")
        assert envoy["command"][:3] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
        assert envoy["readinessProbe"]["grpc"] == {"port": 8080, "service": "mmserve.edge"}
        config = yaml.safe_load(rendered)
        listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
        assert listener["port_value"] == envoy["ports"][0]["containerPort"]
        edge_service = container(edge, "edge")
        assert "--capabilities" in edge_service["command"]
        assert edge_service["command"][-1].split(",") == sorted(CAPS, key=list(CAPS).index)


def test_committed_manifests_parse_as_kubernetes_documents() -> None:
    # Every YAML under deploy/k8s (base, overlays' patches, jobs) is loadable; the patches and
    # kustomizations are not objects to validate on their own.
    files = sorted(Path(K8S).rglob("*.yaml"))
    assert files
    for path in files:
        if path.name in ("kustomization.yaml", "prometheus-adapter-values.yaml"):
            continue
        if path.parent.name == "edge" and path.name == "envoy.yaml":
            continue
        assert kustomize.load_documents(path), path
