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
        from deploy.kafka.cluster import KafkaCluster, ensure_jars

        ensure_jars()
        self.engine = "kafka"
        self.cluster = KafkaCluster(base_dir / "kafka", nodes=nodes)
        self.bootstrap = self.cluster.start()

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
