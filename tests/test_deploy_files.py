"""The production files in deploy/production/ (pure: no broker, no database, no container engine).

The generated files must be exactly what the shared template renders today, so production
cannot drift from the configuration the suite runs against; hub.env may only name settings
that exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.kafka.cluster import LOCAL_SIZING, TEMPLATE, render_server_properties
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
        assert props["listeners"].startswith("SASL_SSL://0.0.0.0:9092,")
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
    assert compose.count(f" --initial-controllers {cluster['KAFKA_INITIAL_CONTROLLERS']} ") == 3
    assert compose.count(f" --cluster-id {cluster['KAFKA_CLUSTER_ID']} ") == 3


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
    # The format job's shell command survives YAML quoting as the exact script render.py made
    # (compose then turns `$$` into `$` and fills ${RENKEI_KAFKA_SASL_PASSWORD}).
    command = document["services"]["kafka-1-format"]["command"]
    assert command == ["/bin/sh", "-ec", render.format_script(render.DEFAULT_CLUSTER_ID)]


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


# -- security: SASL_SSL in production, plain text in the local clusters ----------------------


def local_render(nodes: int) -> list[str]:
    """server.properties as KafkaCluster._prepare renders them (fixed ports and folders)."""
    quorum = ",".join(f"127.0.0.1:{20001 + 2 * n}" for n in range(1, nodes + 1))
    return [
        render_server_properties(
            node_id=n,
            listen_host="127.0.0.1",
            advertised_host="127.0.0.1",
            broker_port=20000 + 2 * n,
            controller_port=20001 + 2 * n,
            quorum_bootstrap=quorum,
            log_dir=Path(f"/tmp/kafka/node-{n}/data"),
            replication_factor=3 if nodes >= 3 else nodes,
            min_isr=2 if nodes >= 3 else 1,
            **LOCAL_SIZING,
        )
        for n in range(1, nodes + 1)
    ]


def test_local_renders_stay_plaintext_with_nothing_appended() -> None:
    # The optional placeholders default to what the template said before it had them: the
    # local clusters' files are byte-identical to the pre-SASL template's (checked by hand
    # when the placeholders were added; this keeps the properties that made it so).
    template = TEMPLATE.read_text()
    assert template.endswith("log.retention.check.interval.ms=300000\n{security_properties}"), (
        "security_properties must stay the very last thing, after the last newline"
    )
    for nodes in (1, 3):
        for text in local_render(nodes):
            props = properties(text)
            assert text.endswith("log.retention.check.interval.ms=300000\n")
            assert props["listeners"].startswith("PLAINTEXT://127.0.0.1:")
            assert props["inter.broker.listener.name"] == "PLAINTEXT"
            assert props["listener.security.protocol.map"] == (
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
            )
            assert "SASL" not in text and "SSL" not in text and "ssl." not in text
            assert "authorizer" not in text and "config.providers" not in text
            assert "{" not in text and "}" not in text


def test_production_brokers_render_sasl_ssl_and_mutual_tls() -> None:
    for name, props in broker_files().items():
        assert props["listeners"] == "SASL_SSL://0.0.0.0:9092,CONTROLLER://0.0.0.0:9093"
        assert props["advertised.listeners"] == f"SASL_SSL://{name}:9092,CONTROLLER://{name}:9093"
        assert props["inter.broker.listener.name"] == "SASL_SSL"
        assert props["listener.security.protocol.map"] == "CONTROLLER:SSL,SASL_SSL:SASL_SSL"
        assert props["controller.listener.names"] == "CONTROLLER"
        assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
        assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
        jaas = props["listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]
        assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule required")
        assert 'username="kafka-broker"' in jaas
        assert props["ssl.keystore.type"] == "PKCS12"
        assert props["ssl.keystore.location"] == f"/etc/kafka/secrets/{name}.p12"
        assert props["ssl.truststore.location"] == "/etc/kafka/secrets/ca.pem"
        assert props["listener.name.controller.ssl.client.auth"] == "required"
        assert props["authorizer.class.name"].endswith("StandardAuthorizer")
        assert props["allow.everyone.if.no.acl.found"] == "false"
        assert props["super.users"].split(";") == [
            "User:kafka-broker",
            *(f"User:CN={b}" for b in BROKERS),
        ]


SECRET_REF = re.compile(r"\$\{file:/etc/kafka/secrets/kafka\.secrets\.properties:[a-z.]+\}")


def test_no_secret_is_rendered() -> None:
    """Passwords are references the broker/tool resolves from the node's secrets file."""
    texts = {name: (GENERATED / name / "server.properties").read_text() for name in BROKERS}
    texts["client.properties"] = (GENERATED / "client.properties").read_text()
    for name, text in texts.items():
        props = properties(text)
        assert props["config.providers.file.param.allowed.paths"] == "/etc/kafka/secrets", name
        for key, value in props.items():
            if "password" in key:
                assert SECRET_REF.fullmatch(value), f"{name}: {key} is not a file reference"
            if "jaas" in key:
                password = re.search(r'password="([^"]*)"', value)
                assert password and SECRET_REF.fullmatch(password.group(1)), f"{name}: {key}"
    compose = (GENERATED / "compose.yaml").read_text()
    assert "${RENKEI_KAFKA_SASL_PASSWORD:?" in compose
    assert "password=$$p]" in compose  # the broker's, read from the secrets file at format time


def test_client_properties_speak_sasl_ssl_as_the_broker_user() -> None:
    props = properties((GENERATED / "client.properties").read_text())
    assert props["security.protocol"] == "SASL_SSL"
    assert props["sasl.mechanism"] == "SCRAM-SHA-512"
    assert 'username="kafka-broker"' in props["sasl.jaas.config"]
    assert props["ssl.truststore.type"] == "PEM"
    assert props["ssl.truststore.location"] == "/etc/kafka/secrets/ca.pem"


def test_compose_mounts_the_secrets_and_formats_with_the_scram_users() -> None:
    services = compose_services((GENERATED / "compose.yaml").read_text())
    secrets = "- ${KAFKA_SECRETS_DIR:?set KAFKA_SECRETS_DIR, see deploy/production/RUNBOOK.md}"
    for name in BROKERS:
        broker = services[name]
        assert f"{secrets}/{name}:/etc/kafka/secrets:ro" in broker
        assert "- ./client.properties:/etc/kafka/client.properties:ro" in broker
        health = next(line for line in broker if line.startswith("test:"))
        assert '"--command-config", "/etc/kafka/client.properties"' in health
        job = services[f"{name}-format"]
        assert f"{secrets}/{name}:/etc/kafka/secrets:ro" in job
        command = next(line for line in job if line.startswith("command:"))
        assert r"--add-scram \"SCRAM-SHA-512=[name=kafka-broker,password=$$p]\"" in command
        assert r"--add-scram \"SCRAM-SHA-512=[name=renkei-hub,password=${RENKEI_" in command
    assert f"{secrets}/ca.pem:/etc/renkei/kafka-ca.pem:ro" in services["hub"]


def test_compose_hub_and_hub_env_agree_on_kafka_security() -> None:
    hub = dict(
        line.split(": ", 1) for line in compose_services((GENERATED / "compose.yaml").read_text())[
            "hub"
        ] if line.startswith("RENKEI_KAFKA_")
    )  # fmt: skip
    env = env_file(HUB_ENV)
    for key in (
        "RENKEI_KAFKA_BOOTSTRAP",
        "RENKEI_KAFKA_SECURITY_PROTOCOL",
        "RENKEI_KAFKA_SASL_MECHANISM",
        "RENKEI_KAFKA_SASL_USERNAME",
        "RENKEI_KAFKA_SSL_CAFILE",
    ):
        assert hub[key] == env[key], key
    assert env["RENKEI_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["RENKEI_KAFKA_SASL_USERNAME"] == render.HUB_USER
    # The user the format jobs create is the one the hub logs in as.
    assert f"name={env['RENKEI_KAFKA_SASL_USERNAME']}," in render.format_script("x")
