"""The broker engines a leg runs on: Tansu (embedded) or Apache Kafka (from Maven Central jars)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class RunningBroker(Protocol):
    bootstrap: str

    def stop(self) -> None: ...


class TansuBroker:
    def __init__(self, base_dir: Path) -> None:
        from deploy.tansu import EmbeddedTansu

        self.engine = "tansu"
        self._tansu = EmbeddedTansu(base_dir / "tansu")
        self.bootstrap = self._tansu.start()

    def restart(self) -> None:
        self._tansu.restart()

    def pause(self) -> None:
        self._tansu.stop()

    def resume(self) -> None:
        self._tansu.start()

    def stop(self) -> None:
        self._tansu.stop()


class ApacheKafkaBroker:
    def __init__(self, base_dir: Path, nodes: int = 1) -> None:
        from deploy.kafka.cluster import KafkaCluster, KafkaTls, ensure_jars
        from renkei.dev_ca import make_dev_ca

        ensure_jars()
        self.engine = "kafka"
        # An SSL listener too (client certificates required), for the TLS end-to-end test;
        # everything else uses the plain-text one.
        self.tls_files = make_dev_ca(base_dir / "kafka-tls")
        keystore = base_dir / "kafka-tls" / "broker-keystore.pem"
        keystore.write_bytes(
            self.tls_files["server_key"].read_bytes() + self.tls_files["server"].read_bytes()
        )
        tls = KafkaTls(keystore=keystore, truststore=self.tls_files["ca"])
        self.cluster = KafkaCluster(base_dir / "kafka", nodes=nodes, tls=tls)
        self.bootstrap = self.cluster.start()
        self.ssl_bootstrap = self.cluster.ssl_bootstrap

    def restart(self) -> None:
        for node in self.cluster.node_ids:
            self.cluster.stop_node(node)
            self.cluster.start_node(node)

    def pause(self) -> None:
        for node in self.cluster.node_ids:
            self.cluster.stop_node(node)

    def resume(self) -> None:
        for node in self.cluster.node_ids:
            self.cluster.start_node(node)

    def stop(self) -> None:
        self.cluster.stop()


def start_broker(engine: str, base_dir: Path):
    if engine == "tansu":
        return TansuBroker(base_dir)
    if engine == "kafka":
        return ApacheKafkaBroker(base_dir)
    raise ValueError(f"unknown engine {engine!r}")
