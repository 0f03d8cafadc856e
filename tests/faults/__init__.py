"""Failover scenarios on a 3-broker Apache Kafka cluster (``make test-faults``)."""
