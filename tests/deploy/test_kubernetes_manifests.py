"""deploy/kubernetes: every manifest passes the Kubernetes OpenAPI schema (kubernetes-validate,
strict: unknown fields are errors) and agrees with what the image and tritonserver actually do.

kubernetes-validate ships the JSON schemas of each Kubernetes release inside its wheel and resolves
`$ref`s only from them (a `referencing` registry without a retriever), so this runs offline.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes we claim to support and the newest schema the validator ships.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
# tritonserver's own ports and health endpoints (tools/serve.py defaults, Triton's HTTP API).
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
READY, LIVE = "/v2/health/ready", "/v2/health/live"
MODEL_READY = "/v2/models/llm/ready"   # turns 400 once a dead engine unloads the model
MODEL_REPOSITORY = "/opt/triton-llm/model_repository"
NOT_IN_KUSTOMIZATION = {"prometheus-adapter-rules.yaml"}   # a snippet of the adapter's config


def load(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def manifest_files() -> list[str]:
    return sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def all_docs() -> list[dict]:
    return [d for name in manifest_files() for d in load(name)]


def one(kind: str, name: str | None = None) -> dict:
    docs = [d for d in all_docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(docs) == 1, f"expected one {kind} {name or ''}, found {len(docs)}"
    return docs[0]


def container() -> dict:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def named_port(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    return {p["name"]: p["containerPort"] for p in c["ports"]}[port]


# ---- the schema validator itself -------------------------------------------------------------

def test_validator_ships_its_schemas_offline():
    """The schemas are files inside the installed wheel and no $ref points at a URL (the validator's
    registry has no retriever, so it could not fetch one anyway; the next test proves it)."""
    import importlib_resources
    version = kubernetes_validate.utils.latest_version()
    root = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    for schema in ("deployment-apps-v1.json", "service-v1.json", "horizontalpodautoscaler-autoscaling-v2.json",
                   "configmap-v1.json", "persistentvolumeclaim-v1.json", "_definitions.json"):
        assert (root / schema).is_file(), schema
    text = (root / "deployment-apps-v1.json").read_text() + (root / "_definitions.json").read_text()
    refs = set(re.findall(r'"\$ref":\s*"([^"#]*)#', text))
    assert refs and not any(re.match(r"[a-z]+://", r) for r in refs), refs   # no remote schema


def test_validator_runs_without_network():
    """The same validation in a process with no network at all (a fresh network namespace)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged network namespaces here")
    code = ("import yaml, kubernetes_validate as kv\n"
            f"for d in yaml.safe_load_all(open({str(K8S / 'deployment.yaml')!r})):\n"
            f"    print(kv.validate(d, {K8S_VERSIONS[-1]!r}, strict=True))\n")
    out = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == kubernetes_validate.utils.major_minor(K8S_VERSIONS[-1])


def test_strict_validation_rejects_mistakes():
    """Guard against a validator that accepts anything: a misspelled field and a wrong type fail."""
    deployment = one("Deployment")
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": READY, "port": 8000}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = yaml.safe_load(yaml.safe_dump(deployment))
    bad["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "sixty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


# ---- every manifest against the schema -------------------------------------------------------

@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", manifest_files())
def test_manifest_passes_strict_schema(name, version):
    docs = load(name)
    assert docs, name
    for doc in docs:
        # SchemaNotFoundError (an unknown kind/apiVersion) fails the test too.
        kubernetes_validate.validate(doc, version, strict=True)


def test_cli_validates_the_directory():
    """The CLI as CI would run it; it only warns on kinds it has no schema for, so list files."""
    cli = Path(sys.executable).parent / "kubernetes-validate"
    if not cli.exists():
        pytest.skip("kubernetes-validate CLI not installed next to this interpreter")
    files = [str(K8S / n) for n in manifest_files()]
    out = subprocess.run([str(cli), "--strict", "-k", K8S_VERSIONS[-1], *files], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARN" not in out.stdout and "ERROR" not in out.stdout, out.stdout
    assert out.stdout.count("INFO") == len(all_docs())


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert k["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and k["kind"] == "Kustomization"
    assert set(k["resources"]) == set(manifest_files()) - NOT_IN_KUSTOMIZATION
    image = container()["image"].split(":")[0]
    assert [i["name"] for i in k["images"]] == [image]


def test_kustomize_renders_valid_manifests():
    """kubectl's built-in kustomize (offline) renders the set; the result validates as well."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(
        d["kind"] for n in manifest_files() if n not in NOT_IN_KUSTOMIZATION for d in load(n))
    for doc in rendered:
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    k = yaml.safe_load((K8S / "kustomization.yaml").read_text())["images"][0]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{k['newName']}:{k['newTag']}"


# ---- semantics: the manifests agree with the image and with Triton ---------------------------

def test_container_serves_the_model_repository_like_the_image():
    c = container()
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD\s+(\[.*\])\s*$", dockerfile, re.M)
    assert cmd, "Dockerfile has no exec-form CMD"
    assert c["command"] + c["args"] == yaml.safe_load(cmd.group(1))
    assert c["command"] == ["python3", "-m", "tools.serve"]
    args = c["args"]
    assert args[args.index("--model-repository") + 1] == MODEL_REPOSITORY
    workdir = re.search(r"^WORKDIR\s+(\S+)", dockerfile, re.M).group(1)
    assert c["workingDir"] == workdir and MODEL_REPOSITORY.startswith(workdir + "/")


def test_ports_match_tritonserver():
    c = container()
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == PORTS
    serve = (REPO_ROOT / "tools" / "serve.py").read_text()
    for name, port in PORTS.items():
        env = {"http": "HTTP_PORT", "grpc": "GRPC_PORT", "metrics": "METRICS_PORT"}[name]
        assert f'os.environ.get("{env}", {port})' in serve, f"tools/serve.py default {env} != {port}"
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == PORTS["metrics"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_probes_hit_triton_health_endpoints():
    c = container()
    for probe, path in (("startupProbe", READY), ("readinessProbe", MODEL_READY)):
        get = c[probe]["httpGet"]
        assert get["path"] == path, probe
        assert named_port(c, get["port"]) == PORTS["http"], probe
    # The model reports a dead engine on its ready endpoint only when it may unload itself.
    assert "--unload-on-engine-failure" in c["args"]
    startup = c["startupProbe"]
    # Model loading may take many minutes (weights, KV sizing, CUDA graphs): at least 10 min.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    live = c["livenessProbe"]
    if "httpGet" in live:
        assert live["httpGet"]["path"] == LIVE and named_port(c, live["httpGet"]["port"]) == PORTS["http"]
    else:
        script = " ".join(live["exec"]["command"])
        assert f"localhost:{PORTS['metrics']}/metrics" in script and "llm_engine_healthy" in script
        assert f"localhost:{PORTS['http']}{MODEL_READY}" in script
    text = (K8S / "deployment.yaml").read_text()
    assert LIVE in text, "keep the HTTP /v2/health/live alternative documented next to the exec probe"


def test_gpu_resource_requested():
    c = container()
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_grace_period_exceeds_triton_exit_timeout():
    from tools.serve import EXIT_TIMEOUT_S as exit_timeout
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > exit_timeout + 10, (grace, exit_timeout)


def test_model_dir_points_at_the_mounted_volume():
    deployment = one("Deployment")
    c = container()
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in mounts.values() if m["mountPath"] == env["MODEL_DIR"])
    assert mount.get("readOnly") is True
    volume = volumes[mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert one("PersistentVolumeClaim", claim)
    assert "PLACEHOLDER" in (K8S / "deployment.yaml").read_text()
    assert "PLACEHOLDER" in (K8S / "model-pvc.yaml").read_text()


def test_service_selects_the_pods():
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    c = container()
    services = [d for d in all_docs() if d["kind"] == "Service"]
    main = one("Service", "triton-llm")
    assert main["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert {p["name"]: p["port"] for p in main["spec"]["ports"]} == PORTS
    for svc in services:
        assert svc["spec"]["selector"].items() <= pod_labels.items(), svc["metadata"]["name"]
        for p in svc["spec"]["ports"]:
            assert named_port(c, p["targetPort"]) == PORTS[p["name"]]


def test_hpa_scales_the_deployment_on_the_waiting_queue():
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one("Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert ":" not in name
    assert metric["pods"]["target"]["type"] == "AverageValue"

    # The adapter rule produces exactly that name from the gauge our model exports.
    adapter = one("ConfigMap")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    [rule] = [r for r in rules if r["name"].get("as") == name]
    source = "vllm:num_requests_waiting"
    assert f'"{source}"' in (REPO_ROOT / "model_repository" / "llm" / "1" / "triton_metrics.py").read_text()
    assert source in rule["seriesQuery"]
    assert re.fullmatch(rule["name"]["matches"], source)
    assert re.sub(rule["name"]["matches"], rule["name"]["as"], source) == name
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


# ---- the liveness exec probe, run for real ---------------------------------------------------

def _liveness_script(port: int) -> list[str]:
    """The probe's script with both of tritonserver's ports (HTTP, metrics) pointed at one fake."""
    command = list(container()["livenessProbe"]["exec"]["command"])
    assert "localhost:8002" in command[-1] and "localhost:8000" in command[-1]
    command[-1] = command[-1].replace("localhost:8002", f"127.0.0.1:{port}").replace("localhost:8000", f"127.0.0.1:{port}")
    return command


class _FakeMetrics:
    """Serves /metrics (`body`) and the model's ready endpoint (200 while `model_ready`)."""
    def __init__(self):
        self.body = ""
        self.model_ready = True
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == MODEL_READY:
                    self.send_response(200 if outer.model_ready else 400)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.path != "/metrics":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = outer.body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_liveness_probe_fails_only_on_unhealthy_engine_or_unready_model():
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    fake = _FakeMetrics()
    try:
        base = ('# HELP nv_inference_count x\nnv_inference_count{model="llm",version="1"} 10\n'
                '# TYPE llm_engine_healthy gauge\n')
        cases = {
            "": 0,                                                        # gauge not exported (yet)
            'llm_engine_healthy{model="llm",version="1"} 1\n': 0,
            'llm_engine_healthy{model="llm",version="1"} 0\n': 1,
            'llm_engine_healthy{instance="llm_0_0",model="llm",version="1"} 1\n'
            'llm_engine_healthy{instance="llm_0_1",model="llm",version="1"} 0\n': 1,  # any instance down
            "llm_engine_healthy 0.0\n": 1,
            'llm_engine_healthy{model="llm",version="1"} 10\n': 0,
            'llm_engine_healthy_total{model="llm",version="1"} 0\n': 0,   # another metric
        }
        for text, failed in cases.items():
            fake.body = base + text
            rc = subprocess.run(_liveness_script(fake.port), capture_output=True, timeout=30).returncode
            assert (rc != 0) == bool(failed), (text, rc)
        # The model unloaded itself after a fatal engine error: its gauge is gone, the probe fails.
        fake.body, fake.model_ready = base, False
        rc = subprocess.run(_liveness_script(fake.port), capture_output=True, timeout=30).returncode
        assert rc != 0
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()
    # Nothing listening: the probe fails.
    rc = subprocess.run(_liveness_script(fake.port), capture_output=True, timeout=30).returncode
    assert rc != 0


def test_liveness_probe_passes_against_the_real_server(server):
    """Against tritonserver's real metrics page (our model loaded and healthy)."""
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    port = int(server.metrics_url.rsplit(":", 1)[1])
    out = subprocess.run(_liveness_script(port), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, (shlex.join(_liveness_script(port)), out.stdout, out.stderr)
