"""The one broker interface: Tansu and Apache Kafka behind the same small surface.

Everything Kafka-facing (producer, consumers, topic administration) is made here, so the
relay, the router and the tests never configure aiokafka themselves. What an engine can do is
detected at start, not configured: Apache Kafka gets the idempotent producer, Tansu does not
(it advertises InitProducerId but cannot serve it).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import TopicAlreadyExistsError

from renkei.kafka_probe import api_versions, init_producer_id_error, parse_bootstrap
from renkei.settings import Settings
from renkei.tls import kafka_context
from schemas.topics import ALL_TOPICS

log = logging.getLogger(__name__)

# Kafka error codes that mean "ask again shortly": request timed out, coordinator loading or
# not available, not coordinator, not enough replicas.
RETRIABLE_ERRORS = frozenset({7, 14, 15, 16, 19, 20})
TANSU_SESSION_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


@dataclass
class BrokerInfo:
    engine: str = "unknown"  # "apache-kafka" or "tansu" (by capability, see detect)
    brokers: int = 0
    idempotent_producer: bool = False


class Broker:
    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.info = BrokerInfo()
        self.topic_problems: list[str] = []
        # One TLS context (renkei.tls) for every client of this broker and for the raw probes.
        self.ssl_context = kafka_context(settings)
        # The raw probes speak TLS but not SASL: with SASL they are replaced by real clients.
        self._probe_ok = settings.kafka_security_protocol in ("PLAINTEXT", "SSL")

    # -- connection options -------------------------------------------------------------
    def client_options(self) -> dict[str, Any]:
        s = self.settings
        options: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "security_protocol": s.kafka_security_protocol,
        }
        if s.kafka_sasl_mechanism:
            options.update(
                sasl_mechanism=s.kafka_sasl_mechanism,
                sasl_plain_username=s.kafka_sasl_username,
                sasl_plain_password=(
                    s.kafka_sasl_password.get_secret_value() if s.kafka_sasl_password else None
                ),
            )
        if self.ssl_context is not None:
            options["ssl_context"] = self.ssl_context
        return options

    # -- start: detect what the engine offers, make the topics ---------------------------
    async def start(self) -> None:
        await self.detect()
        self.topic_problems = await self.ensure_topics()
        for problem in self.topic_problems:
            log.warning("topic settings differ from the cluster: %s", problem)

    async def detect(self) -> BrokerInfo:
        # Raw probe (plain text or TLS); with SASL we trust the cluster to be Apache Kafka.
        if self._probe_ok:
            idempotent = await self._serves_producer_ids()
        else:
            idempotent = True
        admin = await self._admin()
        try:
            cluster = await admin.describe_cluster()
            brokers = len(cluster.get("brokers", []))
        finally:
            await admin.close()
        self.info = BrokerInfo(
            engine="apache-kafka" if idempotent else "tansu",
            brokers=brokers,
            idempotent_producer=idempotent,
        )
        log.info("broker: engine=%s brokers=%d", self.info.engine, brokers)
        return self.info

    async def _serves_producer_ids(self, within: float = 20.0) -> bool:
        """Ask for a producer id until the answer is final: a fresh Kafka cluster answers
        "coordinator loading" for a moment; Tansu answers an unknown error every time. Any
        bootstrap broker that answers will do."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        hosts = parse_bootstrap(self.bootstrap)
        attempt = 0
        while True:
            host, port = hosts[attempt % len(hosts)]
            attempt += 1
            try:
                error = await asyncio.to_thread(
                    init_producer_id_error, host, port, 5.0, self.ssl_context
                )
            except OSError:
                error = 7  # that broker is down: try the next
            if error not in RETRIABLE_ERRORS or loop.time() > deadline:
                return error == 0
            await asyncio.sleep(0.2)

    async def _admin(self) -> AIOKafkaAdminClient:
        admin = AIOKafkaAdminClient(**self.client_options(), request_timeout_ms=15000)
        await admin.start()
        return admin

    # -- topic administration (the one place) --------------------------------------------
    def topic_specs(self) -> list[TopicSpec]:
        s = self.settings
        brokers = max(self.info.brokers, 1)
        rf = s.topic_replication_factor or min(3, brokers)
        min_isr = s.topic_min_insync_replicas or (2 if rf >= 3 else 1)
        configs = {
            "min.insync.replicas": str(min_isr),
            "retention.ms": str(s.topic_retention_ms),
            "compression.type": s.topic_compression,
        }
        return [
            TopicSpec(s.topic(name), s.topic_partitions, rf, dict(configs)) for name in ALL_TOPICS
        ]

    async def ensure_topics(self) -> list[str]:
        """Create missing topics; return how existing ones differ from the settings."""
        specs = self.topic_specs()
        admin = await self._admin()
        try:
            existing = set(await admin.list_topics())
            missing = [spec for spec in specs if spec.name not in existing]
            refused: list[str] = []
            if missing:
                try:
                    response = await admin.create_topics(
                        [
                            NewTopic(
                                spec.name,
                                spec.partitions,
                                spec.replication_factor,
                                topic_configs=spec.configs if self.info.idempotent_producer else {},
                            )
                            for spec in missing
                        ]
                    )
                    # Per-topic errors come in the response, not as exceptions: a cluster that
                    # refuses (e.g. no ACL, error 29) must be reported, not waited for.
                    refused = [
                        f"{entry[0]}: create refused (Kafka error {entry[1]})"
                        for entry in response.topic_errors
                        if entry[1] not in (0, TopicAlreadyExistsError.errno)
                    ]
                except TopicAlreadyExistsError:
                    pass  # another hub process created them first
                created = [
                    s.name for s in missing if not any(r.startswith(f"{s.name}:") for r in refused)
                ]
                await self._wait_until_described(admin, created)
            return refused + await self._differences(admin, specs)
        finally:
            await admin.close()

    async def _wait_until_described(
        self, admin: AIOKafkaAdminClient, names: list[str], within: float = 15.0
    ) -> None:
        """New topics reach every broker's metadata a moment after CreateTopics answers."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            described = await admin.describe_topics(names)
            ready = [
                t for t in described
                if not t.get("error_code")
                and t["partitions"]
                and all(p.get("leader", -1) >= 0 for p in t["partitions"])
            ]  # fmt: skip
            if len(ready) == len(names):
                return
            await asyncio.sleep(0.1)

    async def check_topics(self) -> list[str]:
        admin = await self._admin()
        try:
            self.topic_problems = await self._differences(admin, self.topic_specs())
            return self.topic_problems
        finally:
            await admin.close()

    async def _differences(self, admin: AIOKafkaAdminClient, specs: list[TopicSpec]) -> list[str]:
        problems = []
        described = await admin.describe_topics([spec.name for spec in specs])
        by_name = {topic["topic"]: topic for topic in described}
        for spec in specs:
            topic = by_name.get(spec.name)
            if topic is None or topic.get("error_code"):
                problems.append(f"{spec.name}: missing")
                continue
            partitions = topic["partitions"]
            if len(partitions) != spec.partitions:
                problems.append(
                    f"{spec.name}: partitions {len(partitions)}, settings say {spec.partitions}"
                )
            replicas = min(len(p["replicas"]) for p in partitions) if partitions else 0
            # Tansu reports no real replication; only Apache Kafka is held to the factor.
            if self.info.idempotent_producer and replicas != spec.replication_factor:
                problems.append(
                    f"{spec.name}: replication factor {replicas}, "
                    f"settings say {spec.replication_factor}"
                )
        if self.info.idempotent_producer:
            problems.extend(await self._config_differences(admin, specs))
        return problems

    async def _config_differences(
        self, admin: AIOKafkaAdminClient, specs: list[TopicSpec]
    ) -> list[str]:
        resources = [ConfigResource(ConfigResourceType.TOPIC, spec.name) for spec in specs]
        responses = await admin.describe_configs(resources)
        actual: dict[str, dict[str, str]] = {}
        for response in responses:
            for _err, _msg, _type, name, entries in response.resources:
                actual[name] = {entry[0]: entry[1] for entry in entries}
        problems = []
        for spec in specs:
            for key, wanted in spec.configs.items():
                have = actual.get(spec.name, {}).get(key)
                if have is not None and have != wanted:
                    problems.append(f"{spec.name}: {key}={have}, settings say {wanted}")
        return problems

    # -- clients -------------------------------------------------------------------------
    def producer(self, **overrides: Any) -> AIOKafkaProducer:
        options: dict[str, Any] = dict(
            acks="all",
            enable_idempotence=self.info.idempotent_producer,
            linger_ms=2,
            request_timeout_ms=15000,
            retry_backoff_ms=200,
        )
        options.update(overrides)
        return AIOKafkaProducer(**self.client_options(), **options)

    def consumer(self, *topics: str, group_id: str, **overrides: Any) -> AIOKafkaConsumer:
        session_ms = self.settings.consumer_session_timeout_ms
        if self.info.engine == "tansu":
            # Tansu answers a group join only after about half the session timeout: with the
            # default 10 s a fresh `make run` would hold its first events for 5 s.
            session_ms = min(session_ms, TANSU_SESSION_TIMEOUT_MS)
        options: dict[str, Any] = dict(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed"
            if self.info.idempotent_producer
            else "read_uncommitted",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(session_ms // 5, 100),
            fetch_max_wait_ms=self.settings.consumer_fetch_max_wait_ms,
            metadata_max_age_ms=5000,
        )
        options.update(overrides)
        return AIOKafkaConsumer(*topics, **self.client_options(), **options)

    async def reachable(self) -> bool:
        """Does any bootstrap broker answer? (One broker down is not a hub that is down.)"""
        if not self._probe_ok:
            # The raw probe does not speak SASL: ask with the real client.
            try:
                admin = await self._admin()
            except Exception:  # noqa: BLE001 - unreachable is the answer, not an error
                return False
            await admin.close()
            return True
        for host, port in parse_bootstrap(self.bootstrap):
            try:
                await asyncio.to_thread(api_versions, host, port, 2.0, self.ssl_context)
                return True
            except OSError:
                continue
        return False
