"""The production files in deploy/production/ (pure: no broker, no database, no container engine).

The generated files must be exactly what the shared template renders today, so production
cannot drift from the configuration the suite runs against; hub.env may only name settings
that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.kafka.cluster import render_server_properties
from deploy.production import render
from renkei.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ROOT / "deploy" / "production"
GENERATED = PRODUCTION / "generated"
HUB_ENV = PRODUCTION / "hub.env"
BROKERS = ("kafka-1", "kafka-2", "kafka-3")


def properties(text: str) -> dict[str, str]:
    """key=value lines of a server.properties; a repeated key would be a silent override."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {line!r}"
        assert key not in values, f"{key} is set twice"
        values[key] = value
    return values


def env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line)
        assert match, f"{path.name}:{number}: not KEY=VALUE: {line!r}"
        key, value = match.groups()
        assert key not in values, f"{path.name}:{number}: {key} twice"
        assert not value.startswith(('"', "'")), f"{path.name}:{number}: quoted value"
        values[key] = value
    return values


def broker_files() -> dict[str, dict[str, str]]:
    return {
        name: properties((GENERATED / name / "server.properties").read_text()) for name in BROKERS
    }


# -- generated files: no drift ---------------------------------------------------------------


def test_generated_files_match_a_fresh_render(tmp_path: Path) -> None:
    render.write(tmp_path, render.render())
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(GENERATED) for p in GENERATED.rglob("*") if p.is_file())
    assert committed == fresh, "generated/ has missing or extra files: run the render"
    for relative in fresh:
        assert (GENERATED / relative).read_bytes() == (tmp_path / relative).read_bytes(), (
            f"{relative} differs from a fresh render: "
            "run `python -m deploy.production.render` and commit the result"
        )


def test_broker_files_are_the_shared_template_and_nothing_else() -> None:
    for node_id, name in enumerate(BROKERS, 1):
        expected = render_server_properties(**render.broker_values(node_id))
        assert (GENERATED / name / "server.properties").read_text() == expected


def test_render_cli_writes_to_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "kafka-3" / "server.properties").is_file()
    assert str(tmp_path / "compose.yaml") in capsys.readouterr().out


def test_render_rejects_a_malformed_cluster_id() -> None:
    with pytest.raises(ValueError):
        render.render("not-a-cluster-id")
    # A real random-uuid style id is accepted and changes the directory ids with it.
    other = render.kafka_uuid("another cluster")
    assert render.initial_controllers(other) != render.initial_controllers(
        render.DEFAULT_CLUSTER_ID
    )


# -- brokers: durability and one quorum ------------------------------------------------------


def test_every_broker_has_the_durability_settings() -> None:
    for name, props in broker_files().items():
        assert props["default.replication.factor"] == "3", name
        assert props["min.insync.replicas"] == "2", name
        assert props["unclean.leader.election.enable"] == "false", name
        assert props["offsets.topic.replication.factor"] == "3", name
        assert props["transaction.state.log.replication.factor"] == "3", name
        assert props["transaction.state.log.min.isr"] == "2", name
        assert props["auto.create.topics.enable"] == "false", name


def test_brokers_have_distinct_ids_and_advertise_their_own_host() -> None:
    files = broker_files()
    assert sorted(int(p["node.id"]) for p in files.values()) == [1, 2, 3]
    for name, props in files.items():
        assert props["process.roles"] == "broker,controller"
        assert props["listeners"].startswith("PLAINTEXT://0.0.0.0:9092,")
        assert f"://{name}:9092" in props["advertised.listeners"]
        assert f"CONTROLLER://{name}:9093" in props["advertised.listeners"]
        assert "controller.quorum.voters" not in props  # dynamic quorum (KIP-853)


def test_brokers_share_one_quorum_and_one_set_of_initial_controllers() -> None:
    files = broker_files()
    bootstraps = {p["controller.quorum.bootstrap.servers"] for p in files.values()}
    assert bootstraps == {"kafka-1:9093,kafka-2:9093,kafka-3:9093"}
    cluster = env_file(GENERATED / "cluster.env")
    voters = cluster["KAFKA_INITIAL_CONTROLLERS"].split(",")
    assert [v.split("@")[0] for v in voters] == ["1", "2", "3"]
    for voter, name in zip(voters, BROKERS, strict=True):
        _node, rest = voter.split("@")
        voter_host, port, directory_id = rest.split(":")
        assert (voter_host, port) == (name, "9093")
        assert len(directory_id) == 22
    assert len({v.rsplit(":", 1)[1] for v in voters}) == 3  # distinct directory ids
    # The compose format jobs pass the same value, and the same cluster id, to every node.
    compose = (GENERATED / "compose.yaml").read_text()
    assert compose.count(f'"--initial-controllers", "{cluster["KAFKA_INITIAL_CONTROLLERS"]}"') == 3
    assert compose.count(f'"--cluster-id", "{cluster["KAFKA_CLUSTER_ID"]}"') == 3


# -- compose.yaml ----------------------------------------------------------------------------


def compose_services(text: str) -> dict[str, list[str]]:
    """Top-level `services:` entries and their lines, by indentation (PyYAML is not a
    dependency of the project)."""
    assert "\t" not in text, "tabs in YAML"
    services: dict[str, list[str]] = {}
    section = None
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            section = line.rstrip(":")
            current = None
            continue
        if section != "services":
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"odd indentation: {line!r}"
        if indent == 2:
            match = re.fullmatch(r"  ([a-z0-9][a-z0-9-]*):", line)
            assert match, f"not a service name: {line!r}"
            current = match.group(1)
            assert current not in services, f"service {current} twice"
            services[current] = []
        else:
            assert current is not None
            services[current].append(line.strip())
    return services


def test_compose_names_the_brokers_postgres_and_the_hub() -> None:
    text = (GENERATED / "compose.yaml").read_text()
    top = [line.rstrip(":") for line in text.splitlines() if re.match(r"[a-z]", line)]
    assert top == ["name: renkei-hub", "services", "volumes"]
    services = compose_services(text)
    assert {*BROKERS, "postgres", "hub"} <= set(services)
    for name in BROKERS:
        lines = services[name]
        assert "image: apache/kafka:4.4.0" in lines
        assert f"- ./{name}/server.properties:/mnt/shared/config/server.properties:ro" in lines
        assert (GENERATED / name / "server.properties").is_file()
        assert f"- {name}-data:/var/lib/kafka/data" in lines
        assert 'profiles: ["format"]' in services[f"{name}-format"]
    assert "image: postgres:18" in services["postgres"]
    hub = services["hub"]
    assert "dockerfile: deploy/production/Dockerfile" in hub
    assert (GENERATED / "../../..").resolve() == ROOT  # the build context is the repository
    assert "RENKEI_KAFKA_BOOTSTRAP: kafka-1:9092,kafka-2:9092,kafka-3:9092" in hub
    assert any(line.startswith('RENKEI_DATABASE_URL: "postgresql+asyncpg://') for line in hub)
    # Every RENKEI_ variable compose gives the hub is a real setting.
    names = {line.split(":")[0] for line in hub if line.startswith("RENKEI_")}
    assert names and all(n.removeprefix("RENKEI_").lower() in Settings.model_fields for n in names)


def test_compose_parses_as_yaml() -> None:
    import yaml

    document = yaml.safe_load((GENERATED / "compose.yaml").read_text())
    assert {*BROKERS, "postgres", "hub"} <= set(document["services"])


def test_dockerfile_runs_renkei_up_with_real_settings() -> None:
    text = (PRODUCTION / "Dockerfile").read_text()
    assert "pip install /build" in text
    assert "exec renkei up" in text
    for name in set(re.findall(r"\b(RENKEI_[A-Z_]+)=", text)):
        assert name.removeprefix("RENKEI_").lower() in Settings.model_fields, name
    assert "RENKEI_HOST=0.0.0.0" in text
    assert "RENKEI_KAFKA_BOOTSTRAP=kafka-1:9092,kafka-2:9092,kafka-3:9092" in text


# -- hub.env ---------------------------------------------------------------------------------


def test_hub_env_names_only_real_settings() -> None:
    values = env_file(HUB_ENV)
    assert values, "hub.env is empty"
    unknown = [
        key
        for key in values
        if not key.startswith("RENKEI_")
        or key.removeprefix("RENKEI_").lower() not in Settings.model_fields
    ]
    assert not unknown, f"not settings of renkei/settings.py: {unknown}"


def test_hub_env_loads_into_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("RENKEI_"):
            monkeypatch.delenv(key)
    for key, value in env_file(HUB_ENV).items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)
    assert settings.host == "0.0.0.0"
    assert settings.kafka_bootstrap == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
    assert settings.kafka_security_protocol == "SASL_SSL"
    assert settings.kafka_sasl_mechanism == "SCRAM-SHA-512"
    assert settings.kafka_sasl_username and settings.kafka_sasl_password
    assert settings.kafka_ssl_cafile is not None
    assert settings.resolved_database_url.startswith("postgresql+asyncpg://")
    assert settings.topic_replication_factor == 3
    assert settings.topic_min_insync_replicas == 2
    assert settings.topic_prefix == ""

    # The aiokafka options the hub builds from it (CA file left out: it does not exist here).
    from renkei.broker import Broker

    no_ca = settings.model_copy(update={"kafka_ssl_cafile": None})
    options = Broker(no_ca, settings.kafka_bootstrap).client_options()
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == settings.kafka_sasl_username
    assert options["ssl_context"].check_hostname is True
