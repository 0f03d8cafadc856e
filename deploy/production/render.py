"""Render the production deployment: 3 Apache Kafka 4.4 KRaft nodes, PostgreSQL 18, the hub.

    python -m deploy.production.render [--out deploy/production/generated] [--cluster-id ID]

Every broker's server.properties comes from the ONE template the tested local cluster uses
(deploy/kafka/server.properties.template, filled by deploy.kafka.cluster.render_server_properties):
what the suite runs and what production runs differ only in the placeholder values below. Two
of them exist for production: `client_listener` / `controller_protocol` name the listeners'
security protocols (SASL_SSL and SSL here, PLAINTEXT locally) and `security_properties` adds
the TLS, SCRAM and authorizer lines after the template's last line (nothing locally).
Written files:

    kafka-N/server.properties   node N (N = 1..3) on host kafka-N
    cluster.env                 the cluster id and the --initial-controllers value: the SAME on
                                every node when its storage is formatted (once, at creation)
    client.properties           --command-config of the Kafka tools on a node (SASL_SSL)
    compose.yaml                the three brokers, the storage format jobs (profile "format"),
                                PostgreSQL and the hub built from deploy/production/Dockerfile

The output is deterministic (tests/test_deploy_files.py re-renders and compares it with the
committed copy byte for byte). The default cluster id is derived from a fixed name, so the
committed example is stable; a real cluster should get its own (`kafka-storage.sh random-uuid`)
with --cluster-id, and the directory ids follow from it. compose.yaml refers to the
repository as ../../.. (the build context of the hub image), so render it into the default
--out when you mean to use it with docker compose.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import uuid
from pathlib import Path

from deploy.kafka.cluster import KAFKA_VERSION, render_server_properties

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "generated"

NODE_IDS = (1, 2, 3)
BROKER_PORT = 9092
CONTROLLER_PORT = 9093
KAFKA_IMAGE = f"apache/kafka:{KAFKA_VERSION}"
POSTGRES_IMAGE = "postgres:18"
# Paths inside the apache/kafka image: its data volume, and its documented config mount point.
KAFKA_DATA_DIR = "/var/lib/kafka/data"
KAFKA_CONFIG = "/mnt/shared/config/server.properties"
KAFKA_BIN = "/opt/kafka/bin"
KAFKA_HEAP = "-Xms1g -Xmx1g"

# --- Security --------------------------------------------------------------------------------
# Clients and replication: listener SASL_SSL (TLS, SCRAM-SHA-512). KRaft quorum (CONTROLLER):
# mutual TLS, the node certificates authenticate each other (SCRAM cannot serve there: its
# credentials live in the metadata log the controllers serve). No secret is rendered: the
# brokers read them at start from SECRETS_FILE (Kafka's FileConfigProvider), which the
# operator writes next to the keystores in each node's secrets folder (RUNBOOK.md, "Security").
CLIENT_LISTENER = "SASL_SSL"
CONTROLLER_PROTOCOL = "SSL"
SASL_MECHANISM = "SCRAM-SHA-512"
SECRETS_DIR = "/etc/kafka/secrets"
SECRETS_FILE = f"{SECRETS_DIR}/kafka.secrets.properties"
# Client settings (as BROKER_USER) for the Kafka command-line tools and the compose health
# check on a node: `--command-config /etc/kafka/client.properties`. Holds no secret either.
CLIENT_CONFIG = "/etc/kafka/client.properties"
CA_FILE = f"{SECRETS_DIR}/ca.pem"
# The brokers' own SCRAM user (inter-broker replication; a super user) and the hub's user.
BROKER_USER = "kafka-broker"
HUB_USER = "renkei-hub"
# Host folder with one sub-folder per node (kafka-N/) and the CA certificate for the hub.
SECRETS_HOST_DIR = "${KAFKA_SECRETS_DIR:?set KAFKA_SECRETS_DIR, see deploy/production/RUNBOOK.md}"
HUB_CA_FILE = "/etc/renkei/kafka-ca.pem"
HUB_SASL_PASSWORD = (
    "${RENKEI_KAFKA_SASL_PASSWORD:?set RENKEI_KAFKA_SASL_PASSWORD, "
    "see deploy/production/RUNBOOK.md}"
)

HUB_BOOTSTRAP = ",".join(f"kafka-{n}:{BROKER_PORT}" for n in NODE_IDS)
HUB_PORT = 8000
HUB_DATA_DIR = "/var/lib/renkei"
DB_NAME = "renkei"
DB_USER = "renkei"
# compose interpolation: `docker compose` stops with this message when the variable is unset.
DB_PASSWORD = "${RENKEI_DB_PASSWORD:?set RENKEI_DB_PASSWORD, see deploy/production/RUNBOOK.md}"

_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://renkei-hub.example.jp/kafka")


def kafka_uuid(seed: str) -> str:
    """A Kafka Uuid string (16 bytes, URL-safe base64, no padding) derived from `seed`.

    Deterministic, unlike `kafka-storage.sh random-uuid`, so the rendered files are stable.
    Like Kafka's own generator it avoids a leading '-' (it would read as a command-line flag).
    """
    attempt = 0
    while True:
        raw = uuid.uuid5(_ID_NAMESPACE, f"{seed}#{attempt}" if attempt else seed).bytes
        text = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        if not text.startswith("-"):
            return text
        attempt += 1


DEFAULT_CLUSTER_ID = kafka_uuid("renkei-hub/production")


def check_cluster_id(cluster_id: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cluster_id + "==")
    except ValueError:
        raw = b""
    if len(cluster_id) != 22 or len(raw) != 16 or cluster_id.startswith("-"):
        raise ValueError(
            f"not a Kafka cluster id: {cluster_id!r} (22 characters of URL-safe base64, "
            "as `kafka-storage.sh random-uuid` prints)"
        )
    return cluster_id


def host(node_id: int) -> str:
    return f"kafka-{node_id}"


def directory_id(cluster_id: str, node_id: int) -> str:
    """The metadata log directory id node `node_id` gets when it is first formatted."""
    return kafka_uuid(f"{cluster_id}/directory/{node_id}")


def quorum_bootstrap() -> str:
    return ",".join(f"{host(n)}:{CONTROLLER_PORT}" for n in NODE_IDS)


def initial_controllers(cluster_id: str) -> str:
    """`--initial-controllers` for the storage tool: id@host:port:directory-id, every node."""
    return ",".join(
        f"{n}@{host(n)}:{CONTROLLER_PORT}:{directory_id(cluster_id, n)}" for n in NODE_IDS
    )


def secret(key: str) -> str:
    """A reference the broker resolves at start from SECRETS_FILE (never the value itself)."""
    return f"${{file:{SECRETS_FILE}:{key}}}"


def scram_jaas(user: str, password_key: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{secret(password_key)}";'
    )


def security_properties(node_id: int) -> str:
    """The lines production appends to the shared template (empty for the local clusters)."""
    jaas = scram_jaas(BROKER_USER, "scram.password")
    nodes = ";".join(f"User:CN={host(n)}" for n in NODE_IDS)
    listener = CLIENT_LISTENER.lower()
    return f"""\

# --- Security (rendered by deploy/production/render.py; RUNBOOK.md, "Security") ---
# Secrets are read at start from {SECRETS_FILE}
# (keys keystore.password and scram.password), never written in this file.
config.providers=file
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
config.providers.file.param.allowed.paths={SECRETS_DIR}
# Clients and replication: {CLIENT_LISTENER} with {SASL_MECHANISM}; the brokers' own user
# ({BROKER_USER}) is written into the metadata when the storage is formatted (--add-scram).
sasl.enabled.mechanisms={SASL_MECHANISM}
sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}
listener.name.{listener}.{SASL_MECHANISM.lower()}.sasl.jaas.config={jaas}
# TLS on both listeners: this node's key and certificate (subjectAltName DNS:{host(node_id)},
# extendedKeyUsage serverAuth and clientAuth) and the CA that signed every node's certificate.
# Peers' host names are checked (ssl.endpoint.identification.algorithm defaults to https).
ssl.keystore.type=PKCS12
ssl.keystore.location={SECRETS_DIR}/{host(node_id)}.p12
ssl.keystore.password={secret("keystore.password")}
ssl.truststore.type=PEM
ssl.truststore.location={CA_FILE}
# KRaft quorum and broker-to-controller traffic: mutual TLS, principal User:CN=kafka-N.
listener.name.controller.ssl.client.auth=required
# Authorization: only the nodes and {BROKER_USER} are super users; every other user
# (the hub's {HUB_USER}) needs ACLs.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{BROKER_USER};{nodes}
"""


def client_properties() -> str:
    """--command-config for the Kafka tools on a node (the same file on every node)."""
    return f"""\
# Generated by `python -m deploy.production.render`: do not edit.
# Client settings for the Kafka command-line tools on a broker node, as the super user
# {BROKER_USER}:  kafka-topics.sh --bootstrap-server kafka-1:{BROKER_PORT} \\
#                     --command-config {CLIENT_CONFIG} ...
# The password is read from the node's secrets file, never written here.
security.protocol={CLIENT_LISTENER}
sasl.mechanism={SASL_MECHANISM}
config.providers=file
config.providers.file.class=org.apache.kafka.common.config.provider.FileConfigProvider
config.providers.file.param.allowed.paths={SECRETS_DIR}
sasl.jaas.config={scram_jaas(BROKER_USER, "scram.password")}
ssl.truststore.type=PEM
ssl.truststore.location={CA_FILE}
"""


def broker_values(node_id: int) -> dict[str, object]:
    """The template's placeholders for one production node."""
    return dict(
        node_id=node_id,
        listen_host="0.0.0.0",
        advertised_host=host(node_id),
        broker_port=BROKER_PORT,
        controller_port=CONTROLLER_PORT,
        quorum_bootstrap=quorum_bootstrap(),
        log_dir=KAFKA_DATA_DIR,
        replication_factor=3,
        min_isr=2,
        # Kafka's own defaults (the local cluster shrinks them for speed on 2 cores).
        internal_topic_partitions=50,
        network_threads=3,
        io_threads=8,
        background_threads=10,
        segment_bytes=1024 * 1024 * 1024,
        session_timeout_ms=9000,
        client_listener=CLIENT_LISTENER,
        controller_protocol=CONTROLLER_PROTOCOL,
        security_properties=security_properties(node_id),
    )


def server_properties(node_id: int) -> str:
    return render_server_properties(**broker_values(node_id))


def cluster_env(cluster_id: str) -> str:
    return (
        "# Generated by `python -m deploy.production.render`: do not edit.\n"
        "# Storage format values, the same on every node (kafka-storage.sh format\n"
        "#   --cluster-id $KAFKA_CLUSTER_ID --initial-controllers $KAFKA_INITIAL_CONTROLLERS).\n"
        "# Used once, when the cluster is created; see deploy/production/RUNBOOK.md.\n"
        f"KAFKA_CLUSTER_ID={cluster_id}\n"
        f"KAFKA_INITIAL_CONTROLLERS={initial_controllers(cluster_id)}\n"
    )


def _flow(items: list[str]) -> str:
    """A YAML flow sequence of double-quoted strings (JSON string escapes are YAML's too)."""
    return "[" + ", ".join(json.dumps(item) for item in items) + "]"


def _broker_service(node_id: int) -> str:
    name = host(node_id)
    health = [
        f"{KAFKA_BIN}/kafka-broker-api-versions.sh",
        "--command-config", CLIENT_CONFIG,
        "--bootstrap-server", f"{name}:{BROKER_PORT}",
    ]  # fmt: skip
    return f"""\
  {name}:
    image: {KAFKA_IMAGE}
    hostname: {name}
    restart: unless-stopped
    # Bypasses the image's entry script (which would rebuild server.properties from KAFKA_*
    # variables and format storage by itself): the rendered file is the whole configuration.
    command: {_flow([f"{KAFKA_BIN}/kafka-server-start.sh", KAFKA_CONFIG])}
    environment:
      KAFKA_HEAP_OPTS: "{KAFKA_HEAP}"
    volumes:
      - ./{name}/server.properties:{KAFKA_CONFIG}:ro
      - {name}-data:{KAFKA_DATA_DIR}
      # {name}.p12, ca.pem, kafka.secrets.properties (RUNBOOK.md, "Security")
      - {SECRETS_HOST_DIR}/{name}:{SECRETS_DIR}:ro
      - ./client.properties:{CLIENT_CONFIG}:ro
    healthcheck:
      test: {_flow(["CMD", *health])}
      interval: 15s
      timeout: 30s
      retries: 20
      start_period: 30s
    stop_grace_period: 2m

"""


def format_script(cluster_id: str, hub_password: str = HUB_SASL_PASSWORD) -> str:
    """The format job's shell command (`$$` is compose's escape for a literal `$`).

    The SCRAM users are written into the metadata by the format itself: the brokers need
    theirs before they can replicate (its password is read from the node's SECRETS_FILE, the
    one the broker itself uses), the hub's comes from RENKEI_KAFKA_SASL_PASSWORD.
    """
    return (
        f"p=$$(sed -n 's/^scram.password=//p' {SECRETS_FILE}); "
        f'test -n "$$p" || {{ echo "no scram.password in {SECRETS_FILE}" >&2; exit 64; }}; '
        f"exec {KAFKA_BIN}/kafka-storage.sh format --config {KAFKA_CONFIG} "
        f"--cluster-id {cluster_id} --initial-controllers {initial_controllers(cluster_id)} "
        f'--add-scram "{SASL_MECHANISM}=[name={BROKER_USER},password=$$p]" '
        f'--add-scram "{SASL_MECHANISM}=[name={HUB_USER},password={hub_password}]"'
    )


def _format_service(node_id: int, cluster_id: str) -> str:
    name = host(node_id)
    command = ["/bin/sh", "-ec", format_script(cluster_id)]
    return f"""\
  {name}-format:
    image: {KAFKA_IMAGE}
    profiles: ["format"]
    # Once, before the first start; fails (harmlessly) on storage that is already formatted.
    # NOT for a replaced disk: that node joins with --no-initial-controllers (RUNBOOK.md).
    # Also writes the SCRAM users {BROKER_USER} and {HUB_USER} (their passwords: {SECRETS_FILE}
    # and RENKEI_KAFKA_SASL_PASSWORD).
    command: {_flow(command)}
    volumes:
      - ./{name}/server.properties:{KAFKA_CONFIG}:ro
      - {name}-data:{KAFKA_DATA_DIR}
      - {SECRETS_HOST_DIR}/{name}:{SECRETS_DIR}:ro

"""


def compose_yaml(cluster_id: str) -> str:
    brokers = "".join(_broker_service(n) for n in NODE_IDS)
    formats = "".join(_format_service(n, cluster_id) for n in NODE_IDS)
    depends = "".join(f"      {host(n)}:\n        condition: service_healthy\n" for n in NODE_IDS)
    database_url = f"postgresql+asyncpg://{DB_USER}:{DB_PASSWORD}@postgres:5432/{DB_NAME}"
    readyz = (
        "import sys, urllib.request; "
        f"sys.exit(urllib.request.urlopen('http://127.0.0.1:{HUB_PORT}/readyz', timeout=5)"
        ".status != 200)"
    )
    volumes = "".join(f"  {host(n)}-data:\n" for n in NODE_IDS)
    return f"""\
# Generated by `python -m deploy.production.render`: do not edit; change render.py or
# deploy/kafka/server.properties.template and render again. Operating it: RUNBOOK.md.
# Not run on the machine that rendered it (no container engine there).
#
# First start:   export RENKEI_DB_PASSWORD=... RENKEI_KAFKA_SASL_PASSWORD=... KAFKA_SECRETS_DIR=...
#                docker compose --profile format run --rm kafka-1-format   (and -2, -3)
#                docker compose up -d
# The brokers listen SASL_SSL (SCRAM-SHA-512) for clients and replication and use mutual TLS
# between controllers; KAFKA_SECRETS_DIR holds the keystores and passwords (RUNBOOK.md,
# "Security"). No Kafka port is published.
name: renkei-hub

services:
{brokers}{formats}  postgres:
    image: {POSTGRES_IMAGE}
    restart: unless-stopped
    environment:
      POSTGRES_DB: {DB_NAME}
      POSTGRES_USER: {DB_USER}
      POSTGRES_PASSWORD: "{DB_PASSWORD}"
    volumes:
      # PostgreSQL 18 images keep data under /var/lib/postgresql/18/docker: mount the parent.
      - postgres-data:/var/lib/postgresql
    healthcheck:
      test: {_flow(["CMD", "pg_isready", "-U", DB_USER, "-d", DB_NAME])}
      interval: 5s
      timeout: 5s
      retries: 20
    stop_grace_period: 1m

  hub:
    build:
      context: ../../..
      dockerfile: deploy/production/Dockerfile
    image: renkei-hub:local
    restart: unless-stopped
    depends_on:
      postgres:
        condition: service_healthy
{depends}    environment:
      RENKEI_HOST: "0.0.0.0"
      RENKEI_PORT: "{HUB_PORT}"
      RENKEI_DATA_DIR: {HUB_DATA_DIR}
      RENKEI_KAFKA_BOOTSTRAP: {HUB_BOOTSTRAP}
      RENKEI_KAFKA_SECURITY_PROTOCOL: {CLIENT_LISTENER}
      RENKEI_KAFKA_SASL_MECHANISM: {SASL_MECHANISM}
      RENKEI_KAFKA_SASL_USERNAME: {HUB_USER}
      RENKEI_KAFKA_SASL_PASSWORD: "{HUB_SASL_PASSWORD}"
      RENKEI_KAFKA_SSL_CAFILE: {HUB_CA_FILE}
      RENKEI_DATABASE_URL: "{database_url}"
      # Fixed, not min(3, brokers seen at start): a start while one broker is down must not
      # create RF-2 topics.
      RENKEI_TOPIC_REPLICATION_FACTOR: "3"
      RENKEI_TOPIC_MIN_INSYNC_REPLICAS: "2"
    ports:
      - "{HUB_PORT}:{HUB_PORT}"
    volumes:
      # The token signing key lives here: keep it across restarts and image upgrades.
      - hub-data:{HUB_DATA_DIR}
      # The CA that signed the brokers' certificates.
      - {SECRETS_HOST_DIR}/ca.pem:{HUB_CA_FILE}:ro
    healthcheck:
      test: {_flow(["CMD", "python", "-c", readyz])}
      interval: 15s
      timeout: 10s
      retries: 10
      start_period: 60s
    stop_grace_period: 1m

volumes:
{volumes}  postgres-data:
  hub-data:
"""


def render(cluster_id: str = DEFAULT_CLUSTER_ID) -> dict[str, str]:
    """Every generated file: relative path -> text."""
    check_cluster_id(cluster_id)
    files = {f"{host(n)}/server.properties": server_properties(n) for n in NODE_IDS}
    files["client.properties"] = client_properties()
    files["cluster.env"] = cluster_env(cluster_id)
    files["compose.yaml"] = compose_yaml(cluster_id)
    return files


def write(out: Path, files: dict[str, str]) -> list[Path]:
    written = []
    for relative, text in files.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.production.render",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--cluster-id", default=DEFAULT_CLUSTER_ID, help="Kafka cluster id (default: the example)"
    )
    args = parser.parse_args(argv)
    try:
        files = render(args.cluster_id)
    except ValueError as exc:
        parser.error(str(exc))
    for path in write(args.out, files):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
