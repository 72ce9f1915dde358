"""Deployment files, validated offline (issue 13 point 4): deploy/ (Kubernetes) and docker-compose.yml.

- every manifest in deploy/ against the Kubernetes OpenAPI schemas (kubernetes-validate, strict: no
  unknown fields), for the oldest and the newest supported Kubernetes version;
- the cross-references no schema checks: selectors and labels, named ports, probe paths that the app
  really serves, Secret and ConfigMap names and keys, environment variables the service really reads,
  a writable folder for everything written under a read-only root file system;
- the rule-file ConfigMap as ``kubectl create configmap --from-file=rules/`` makes it, and the rule-file
  watcher following a ConfigMap update (the kubelet's atomic ``..data`` symlink flip);
- docker-compose.yml: two replicas behind nginx, with PostgreSQL (docker is not run here).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import ROOT, RULES_DIR

from cds.config import ENV, SERVER_ENV

DEPLOY = ROOT / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
#: variables read by the server of the entry point (cds.serve: cds.config.ServerSettings), besides the app's settings
SERVER_VARS = set(SERVER_ENV)
OTHER_VARS = {"PROMETHEUS_MULTIPROC_DIR"}  # prometheus-client's multiprocess folder (cds.metrics)


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _container() -> dict[str, Any]:
    (container,) = _one("Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def _env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container()["env"]}


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_the_deploy_folder_has_every_kind_of_object():
    kinds = sorted(d["kind"] for d in _docs())
    assert kinds == sorted(["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret", "ConfigMap"])


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path, version):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_a_schema_violation_is_caught(version):
    # the validator itself: an unknown field and a wrong type both fail (strict mode)
    bad = yaml.safe_load((DEPLOY / "pdb.yaml").read_text())
    bad["spec"]["minAvailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)
    bad = yaml.safe_load((DEPLOY / "hpa.yaml").read_text())
    bad["spec"]["minReplicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, version, strict=True)


def test_selectors_and_labels_match():
    deployment = _one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], labels)
    assert _matches(_one("Service")["spec"]["selector"], labels)
    assert _matches(_one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert all(_matches(c["labelSelector"]["matchLabels"], labels) for c in spread)
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])


def test_scaling_keeps_a_replica_through_disruptions():
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    pdb = _one("PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] >= 2 and hpa["maxReplicas"] > hpa["minReplicas"]
    assert pdb["minAvailable"] < hpa["minReplicas"]  # a drain can always evict one pod
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert "cpu" in _container()["resources"]["requests"]  # utilisation is relative to the request
    assert _one("Deployment")["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_ports_and_probes_point_at_what_the_app_serves(app):
    container = _container()
    (port,) = container["ports"]
    assert port["containerPort"] == int(_env()["CDS_PORT"]["value"]) == 8080
    assert _one("Service")["spec"]["ports"][0]["targetPort"] == port["name"]
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    probes = {name: container[name]["httpGet"] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    for name, probe in probes.items():
        assert probe["port"] == port["name"], name
        assert probe["path"] in routes, f"{name}: {probe['path']} is not served by the app"
    assert probes["readinessProbe"]["path"] == "/readyz"  # 503 while the database is unreachable
    assert probes["livenessProbe"]["path"] == "/healthz"  # never restarts a pod for a database outage
    annotations = _one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes
    assert int(annotations["prometheus.io/port"]) == port["containerPort"]
    client = app.test_client()
    assert client.get(probes["livenessProbe"]["path"]).status_code == 200
    assert client.get(probes["readinessProbe"]["path"]).status_code == 200


def test_every_environment_variable_is_one_the_service_reads():
    known = set(ENV) | SERVER_VARS | OTHER_VARS
    assert {"CDS_WORKERS", "CDS_THREADS"} <= SERVER_VARS
    unknown = sorted(set(_env()) - known)
    assert not unknown, f"the Deployment sets variables nothing reads: {unknown}"


def test_secrets_and_configmaps_are_wired():
    env = _env()
    secret = _one("Secret")
    for var in ("CDS_DATABASE_URL", "CDS_AUDIT_KEY"):
        ref = env[var]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
    assert secret["stringData"]["database-url"].startswith("postgresql+psycopg://")
    assert env["CDS_JTI_STORE"]["value"] == "database"  # the replay store shared by every replica
    assert env["CDS_AUTH"]["value"] == "on"

    spec = _one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in _container()["volumeMounts"]}
    # the rule files: the whole ConfigMap at CDS_RULES_DIR, no subPath (a subPath mount never updates)
    rules_mount = mounts[env["CDS_RULES_DIR"]["value"]]
    assert "subPath" not in rules_mount and rules_mount["readOnly"] is True
    assert volumes[rules_mount["name"]]["configMap"]["name"] == "lbp-cds-rules"
    assert float(env["CDS_RULES_POLL_SECONDS"]["value"]) > 0  # the watcher is on
    # the trusted issuers: the file CDS_TRUSTED_ISSUERS names is a key of the issuers ConfigMap
    issuers_path = Path(env["CDS_TRUSTED_ISSUERS"]["value"])
    issuers_mount = mounts[str(issuers_path.parent)]
    issuers = _one("ConfigMap", volumes[issuers_mount["name"]]["configMap"]["name"])
    assert issuers_path.name in issuers["data"]
    assert "jwks_url" in yaml.safe_load(issuers["data"][issuers_path.name])["issuers"][0]
    # one worker per CPU of this container's limit
    workers = env["CDS_WORKERS"]["valueFrom"]["resourceFieldRef"]
    assert workers["containerName"] == _container()["name"] and workers["resource"] == "limits.cpu"


def test_the_read_only_root_file_system_leaves_somewhere_to_write():
    container = _container()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    pod = _one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert f"--uid {pod['runAsUser']}" in (ROOT / "Dockerfile").read_text()  # the image's user
    volumes = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["volumes"]}
    writable = [m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]]
    multiproc = _env()["PROMETHEUS_MULTIPROC_DIR"]["value"]
    assert any(Path(multiproc).is_relative_to(w) for w in writable), "the metrics folder must be writable"
    assert "/tmp" in writable  # the metrics folder and Python's temporary files


def _configmap_from_folder(name: str, folder: Path) -> dict[str, Any]:
    """What ``kubectl create configmap NAME --from-file=FOLDER/`` makes: every regular file of the folder,
    not its subfolders."""
    data = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.is_file()}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def test_the_rules_configmap_made_from_a_rule_folder_is_valid():
    configmap = _configmap_from_folder("lbp-cds-rules", RULES_DIR)
    kubernetes_validate.validate(configmap, K8S_VERSIONS[-1], strict=True)
    assert set(configmap["data"]) == {p.name for p in RULES_DIR.glob("*.yaml")}
    assert all(re.fullmatch(r"[-._a-zA-Z0-9]+", key) for key in configmap["data"])  # valid ConfigMap keys
    assert sum(len(v.encode()) for v in configmap["data"].values()) < 1024 * 1024  # the ConfigMap size limit


def _kubelet_write(volume: Path, files: dict[str, str], stamp: str) -> None:
    """What the kubelet does on a ConfigMap update (its atomic writer): write the files into a new
    timestamped folder, flip the ``..data`` symlink to it with one rename, link any new top-level name
    through ``..data``, remove the old folder."""
    new = volume / f"..{stamp}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
    old = os.readlink(volume / "..data") if (volume / "..data").is_symlink() else None
    tmp = volume / "..data_tmp"
    tmp.symlink_to(new.name)
    os.replace(tmp, volume / "..data")  # the atomic swap
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    if old is not None:
        for p in (volume / old).iterdir():
            p.unlink()
        (volume / old).rmdir()


def test_the_rule_watcher_follows_a_configmap_update(tmp_path):
    from cds.live_rules import LiveRuleSet

    volume = tmp_path / "rules"
    volume.mkdir()
    files = {p.name: p.read_text() for p in RULES_DIR.glob("*.yaml")}
    _kubelet_write(volume, files, "2026_12_04_01_00_00.000000001")
    live = LiveRuleSet(volume, poll_seconds=0)
    first = live.current().ruleset
    assert live.poll() is False  # nothing changed

    version = re.search(r"^  version: (\S+)$", files["ruleset.yaml"], re.M)
    assert version is not None
    edited = dict(files, **{"ruleset.yaml": files["ruleset.yaml"].replace(
        version.group(0), "  version: 9.9.9-configmap", 1)})
    _kubelet_write(volume, edited, "2026_12_04_01_05_00.000000002")
    assert live.poll() is False  # changed: loaded once the next poll sees the same files
    assert live.poll() is True
    assert live.current().ruleset.identity.version == "9.9.9-configmap"
    assert live.current().ruleset.sha256 != first.sha256
    assert live.history == [first.sha256, live.current().ruleset.sha256]
    assert len([p for p in volume.iterdir() if p.name.startswith("..2026")]) == 1  # the old folder is gone


# ---- docker-compose.yml --------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in service["environment"].items()}


def test_compose_runs_two_replicas_behind_nginx_with_postgresql():
    services = _compose()["services"]
    assert set(services) == {"db", "cds", "proxy"}
    cds, proxy, db = services["cds"], services["proxy"], services["db"]
    assert cds["deploy"]["replicas"] == 2
    assert "ports" not in cds  # two replicas cannot publish one host port; only the proxy does
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert cds["depends_on"]["db"]["condition"] == "service_healthy"
    assert proxy["depends_on"]["cds"]["condition"] == "service_healthy"  # the image's HEALTHCHECK
    assert "HEALTHCHECK" in (ROOT / "Dockerfile").read_text()
    assert db["image"].startswith("postgres:")

    env = _compose_env(cds)
    assert not sorted(set(env) - set(ENV) - SERVER_VARS), "compose sets variables nothing reads"
    assert env["CDS_JTI_STORE"] == "database"
    url = env["CDS_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://") and "@db:5432/" in url  # the db service
    assert url.rsplit("/", 1)[1] == db["environment"]["POSTGRES_DB"]


def test_the_nginx_config_proxies_to_the_cds_service():
    proxy = _compose()["services"]["proxy"]
    (mount,) = proxy["volumes"]
    source, target, mode = mount.split(":")
    conf_path = ROOT / source
    assert conf_path.is_file() and target == "/etc/nginx/nginx.conf" and mode == "ro"
    conf = conf_path.read_text()
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", conf, re.M)
    assert servers == [("cds", "8080")]  # the compose service name and the image's CDS_PORT
    assert "EXPOSE 8080" in (ROOT / "Dockerfile").read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*{", conf)
    assert upstream and f"proxy_pass http://{upstream.group(1)};" in conf
    listen = re.search(r"listen\s+(\d+);", conf)
    assert listen and proxy["ports"][0].endswith(f":{listen.group(1)}")
    assert conf.count("{") == conf.count("}")


def test_the_nginx_config_buffers_requests_and_times_out_slow_clients():
    """nginx answers slow clients itself: header and body deadlines, whole bodies buffered before the
    upstream sees them, and a body limit no smaller than the service's (which answers its own 413)."""
    conf = (ROOT / "docker" / "nginx.conf").read_text()

    def seconds(name: str) -> int:
        found = re.search(rf"^\s*{name}\s+(\d+)s;", conf, re.M)
        assert found, f"{name} missing"
        return int(found.group(1))

    assert 0 < seconds("client_header_timeout") <= 15
    assert 0 < seconds("client_body_timeout") <= 15
    assert 0 < seconds("send_timeout") <= 30
    assert re.search(r"^\s*proxy_request_buffering\s+on;", conf, re.M)
    # the upstream's idle connections are dropped by nginx before the service closes them (else a POST
    # sent on a connection the service is closing is a 502)
    upstream = conf[conf.index("upstream "):]
    upstream = upstream[:upstream.index("}")]
    idle = re.search(r"keepalive_timeout\s+(\d+)s;", upstream)
    from cds.serve import load_server_settings

    assert idle and int(idle.group(1)) < load_server_settings({}).header_timeout
    size = re.search(r"^\s*client_max_body_size\s+(\d+)m;", conf, re.M)
    from cds.config import Settings

    assert size and int(size.group(1)) * 1024 * 1024 >= Settings.model_fields["max_body_bytes"].default


def test_the_entrypoint_migrates_then_runs_the_production_server():
    script = (ROOT / "docker" / "entrypoint.sh").read_text()
    assert "    cds db upgrade" in script.split("exec python -m cds.serve")[0]  # migrations first
    assert script.rstrip().endswith("exec python -m cds.serve")  # exec: the server gets the signals
    assert "PROMETHEUS_MULTIPROC_DIR" in script
    assert "granian" in (ROOT / "pyproject.toml").read_text()
