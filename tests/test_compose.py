"""docker-compose.yaml, validated as compose itself reads it: `docker-compose config` with dummy secrets.

There is no Docker engine on the development and CI machines; Debian's docker-compose package (.ci/run installs
it) resolves and validates the file without one. What is checked is the production shape the file promises: every
secret required from the environment, healthchecks and health-gated start order, Redis closed to the host, one
image for every shoprec service, the production Feast settings, the API key on, a worker for the training queue.
"""

import itertools
import json
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKER_COMPOSE = shutil.which("docker-compose")
THIRD_PARTY = {"postgres", "redis", "airflow-broker"}  # official images; every other service runs shoprec's
INIT = {"airflow-init"}  # one-shot: runs to completion, no healthcheck
SECRET_NAME = re.compile(r"PASSWORD$|SECRET|_KEY$|FERNET|TOKEN")

pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose not installed (Debian: apt-get install docker-compose; .ci/run installs it)",
)


def required_variables() -> list[str]:
    """Every ${VAR:?...} of the compose file (comments aside), in order of first use."""
    text = "\n".join(line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#"))
    return list(dict.fromkeys(re.findall(r"\$\{(\w+):\?", text)))


def dummy_env() -> dict[str, str]:
    """A distinctive throwaway value per required variable, so each can be traced in the resolved config."""
    return {name: f"dummy{name.lower().replace('_', '')}{secrets.token_hex(4)}" for name in required_variables()}


def compose(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in env.items()))
    # A clean environment: the caller's own variables (or a .env) must not fill in what the file leaves out.
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([DOCKER_COMPOSE, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", *args],
                          cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def supports_json() -> bool:
    help_text = subprocess.run([DOCKER_COMPOSE, "config", "--help"], capture_output=True, text=True, check=False)
    return "--format" in help_text.stdout


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> tuple[dict, dict[str, str]]:
    """The config as compose resolves it (JSON where this compose can print it, else its YAML), and the env."""
    tmp_path, env = tmp_path_factory.mktemp("compose"), dummy_env()
    args = ("--format", "json") if supports_json() else ()
    result = compose(tmp_path, env, *args)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout) if args else yaml.safe_load(result.stdout)
    return config, env


@pytest.fixture(scope="module")
def services(resolved) -> dict[str, dict]:
    return resolved[0]["services"]


def test_the_file_requires_its_secrets():
    names = required_variables()
    for name in ["POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "FEAST_DB_PASSWORD", "REDIS_PASSWORD",
                 "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_USERNAME",
                 "AIRFLOW_ADMIN_PASSWORD", "SHOPREC_SERVICE_API_KEY"]:  # fmt: skip
        assert name in names, f"{name} is not required with ${{{name}:?...}}"


@pytest.mark.parametrize("missing", required_variables())
def test_a_missing_secret_stops_compose_naming_it(tmp_path, missing):
    env = dummy_env()
    del env[missing]
    result = compose(tmp_path, env, "-q")
    assert result.returncode != 0
    assert f"{missing} is required" in result.stderr + result.stdout


def test_env_example_lists_every_required_variable_empty():
    lines = (ROOT / ".env.example").read_text().splitlines()
    for name in required_variables():
        assert f"{name}=" in lines, f".env.example does not list {name}= (empty)"


def test_every_long_running_service_has_a_healthcheck(services):
    for name, service in services.items():
        if name in INIT:
            continue
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"] != ["NONE"], name


def test_every_dependency_waits_on_a_condition(services):
    for name, service in services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: depends_on without conditions"
        for other, how in depends.items():
            wanted = "service_completed_successfully" if other in INIT else "service_healthy"
            assert how.get("condition") == wanted, f"{name} -> {other}: {how}"
            assert other in services, f"{name} depends on an unknown service {other}"


def test_redis_and_postgres_are_not_published_on_the_host(services):
    for name in ["redis", "postgres", "airflow-broker", "feature-server"]:
        assert not services[name].get("ports"), f"{name} publishes {services[name]['ports']}"


def test_secrets_appear_only_where_substituted(resolved):
    """Each dummy value lands only where the file says ${ITS_VARIABLE...}, and no secret-named setting or URL
    carries a literal credential."""
    config, env = resolved
    raw = yaml.safe_load(COMPOSE_FILE.read_text())  # anchors and merge keys expanded, ${...} left as written
    text = COMPOSE_FILE.read_text()
    for value in env.values():
        assert value not in text
    for weak in ["airflow:airflow", "shoprec:shoprec", "admin:admin", "POSTGRES_PASSWORD: postgres"]:
        assert weak not in text, f"a default credential in docker-compose.yaml: {weak}"

    for name, service in config["services"].items():
        raw_service = raw["services"][name]
        for key, value in (service.get("environment") or {}).items():
            written = str(raw_service["environment"][key])
            for variable, dummy in env.items():
                if dummy in str(value):
                    assert f"${{{variable}:?" in written, f"{name}.{key}: {variable}'s value from {written!r}"
            if SECRET_NAME.search(key):
                assert written.startswith("${"), f"{name}.{key} is a literal: {written!r}"
            for credential in re.findall(r"://[^:/@\s]*:([^@\s]+)@", written):
                assert credential.startswith("${"), f"{name}.{key}: a literal password in {written!r}"
        for part in service.get("command") or []:
            assert not any(dummy in str(part) for dummy in env.values()), f"{name}: a secret on the command line"


def test_shoprec_services_build_from_the_one_dockerfile(services):
    shoprec = {name: s for name, s in services.items() if name not in THIRD_PARTY}
    assert {"airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "feature-server", "recommender"} <= set(shoprec)  # fmt: skip
    images = set()
    for name, service in shoprec.items():
        build = service.get("build")
        assert build, f"{name} does not build the project's image"
        assert Path(build["context"]).resolve() == ROOT, name
        assert build.get("dockerfile", "Dockerfile") == "Dockerfile", name
        images.add(service.get("image"))
    assert len(images) == 1, f"shoprec services tag different images: {images}"
    assert (ROOT / "Dockerfile").exists()


def test_the_dockerfile_runs_as_a_non_root_user_without_secrets_or_healthcheck():
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.split()[0] for line in dockerfile.splitlines() if line and not line[0].isspace()
                    and not line.startswith("#")]  # fmt: skip
    users = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must end on a non-root USER"
    assert "HEALTHCHECK" not in instructions
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "requirements.lock" in dockerfile
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|API_KEY|FERNET)", dockerfile, re.MULTILINE)


def test_the_service_requires_its_api_key(resolved):
    config, env = resolved
    service = config["services"]["recommender"]
    assert service["environment"]["SHOPREC_API_KEY"] == env["SHOPREC_SERVICE_API_KEY"]


def test_feast_readers_use_the_production_store(resolved):
    config, env = resolved
    for name, service in config["services"].items():
        if name in THIRD_PARTY:
            continue
        environment = service["environment"]
        assert environment["SHOPREC_FEAST_ENV"] == "production", name
        assert environment["SHOPREC_REDIS_URL"] == f"redis:6379,password={env['REDIS_PASSWORD']}", name
        assert environment["SHOPREC_FEAST_REGISTRY_URL"].endswith("@postgres:5432/feast"), name
        assert env["FEAST_DB_PASSWORD"] in environment["SHOPREC_FEAST_REGISTRY_URL"], name
        assert environment["SHOPREC_HOME"] == "/var/lib/shoprec", name


def test_airflow_runs_every_component_with_auth_on(services):
    commands = {name: " ".join(map(str, s.get("command") or [])) for name, s in services.items()}
    for component in ["api-server", "scheduler", "dag-processor", "triggerer"]:
        assert any(f"airflow {component}" in c for c in commands.values()), f"no airflow {component}"
    assert "airflow db migrate" in commands["airflow-init"]
    environment = services["airflow-api-server"]["environment"]
    assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS"] == "False"
    assert environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"].endswith(":admin")


def test_the_celery_profile_has_a_training_worker(services):
    celery = {name: s for name, s in services.items() if "celery" in (s.get("profiles") or [])}
    assert "airflow-broker" in celery
    training = []
    for name, service in celery.items():
        command = [str(part) for part in service.get("command") or []]
        pairs = itertools.pairwise(command)
        if "worker" in command and any(flag in ("--queues", "-q") and "training" in value.split(",")
                                       for flag, value in pairs):  # fmt: skip
            training.append(name)
    assert training, "no celery worker listens on the training queue"
    broker_url = services["airflow-worker"]["environment"]["AIRFLOW__CELERY__BROKER_URL"]
    assert broker_url.startswith("redis://:") and broker_url.endswith("@airflow-broker:6379/0")
