"""The hub's one settings object, read from the environment (prefix ``RENKEI_``) and ``.env``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RENKEI_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("var")
    # Unset: SQLite file in the data dir.
    database_url: str | None = None
    # Unset: `renkei up` starts the embedded Tansu broker.
    kafka_bootstrap: str | None = None
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    # The hub's own certificate for brokers that ask for one (ssl.client.auth=required), PEM.
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None

    # HTTPS: both set, `renkei up` serves TLS only (TLS 1.3 unless tls_min_version is "1.2").
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_min_version: Literal["1.2", "1.3"] = "1.3"
    # Client certificates (system clients, 安全管理ガイドライン 6.0): a CA bundle; "optional"
    # checks a certificate when one is presented, "required" refuses connections without one.
    tls_client_ca: Path | None = None
    tls_client_cert: Literal["optional", "required"] = "optional"
    # The URL partners reach the hub at (links, the token endpoint a client assertion's aud must
    # name); never taken from the Host header. Unset: http(s)://{host}:{port}.
    public_base_url: str | None = None

    # Prepended to every topic name: several hubs (regions, test runs) can share one cluster.
    topic_prefix: str = ""
    canonical_base: str = "https://renkei-hub.example.jp/fhir"
    # The region office: the Organization the hub creates at first start, the only holder of
    # the region-admin role (registry, care teams, consents, the unmatched queue).
    region_org: str = "region-office"
    region_name: str = "地域連携相談窓口"

    # Topics: created if missing, checked at start.
    topic_partitions: int = 6
    topic_replication_factor: int | None = None  # None: min(3, brokers in the cluster)
    topic_min_insync_replicas: int | None = None  # None: 2 when RF >= 3, else 1
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    topic_compression: str = "producer"

    # How long an unwrapped data key stays in memory (the hot path); a patient forgotten by
    # another process stops decrypting here after at most this long (reads check forgotten_at
    # in the database at once).
    dek_cache_seconds: float = 300.0

    # Every request body, on every route (services/guard.py): larger answers 413.
    max_message_bytes: int = Field(default=1024 * 1024, description="Largest accepted body")
    # Per client (token subject), in process memory (services/throttle.py): a token bucket of
    # `rate_limit_burst` requests refilled at `rate_limit_per_second`; beyond it 429.
    rate_limit_per_second: float = 500.0
    rate_limit_burst: int = 1000
    # $process-message: how many of one client's messages may be in progress at once.
    process_message_concurrency: int = 16
    # Worker threads validating bodies off the event loop (0: one per core but one, at least 1).
    validation_threads: int = 0
    # CLI-issued tokens: an hour unless --ttl says otherwise; never more than a day.
    token_ttl_seconds: int = Field(default=3600, gt=0, le=24 * 3600)
    # Access tokens of system clients (POST /oauth/token): at most an hour.
    client_token_ttl_seconds: int = Field(default=3600, gt=0, le=3600)

    # `renkei up`: how many HTTP worker processes share the port (0: one per core); the relay
    # and the router run as processes of their own beside them.
    http_workers: int = Field(default=0, ge=0)
    # How long a stopping `renkei up` waits for its children after SIGTERM before SIGKILL.
    shutdown_grace_seconds: float = Field(default=10.0, gt=0)

    # Outbox relay: how often it polls, how long a claim lasts, and after how long an event that
    # was published but not yet routed is published again (the broker may have lost it).
    relay_poll_seconds: float = 0.2
    # Renewed while the rows are in flight: short, so a killed relay's rows (and the later rows
    # of their streams, which wait for them) come back within seconds.
    relay_claim_seconds: float = 9.0
    relay_redeliver_after_seconds: float = 60.0
    # Small on purpose: after an outage the backlog should drain at once, not after a long
    # back-off left over from the outage (the relay and the router reset it on first success).
    relay_backoff_max_seconds: float = 1.0
    # After the broker returns, events sent before the outage and still not routed this long
    # after the return are published again at once, rather than after the whole re-drive
    # window (Tansu forgets everything on restart; an unclean failover can lose acked records).
    relay_recovery_redrive_seconds: float = 5.0

    # Live stream (GET /notifications/stream): a comment line this often keeps proxies and
    # clients from timing the connection out; the database is read again at least this often
    # when no doorbell rang (the router's ring wakes a stream on the same host at once; set it
    # lower for HTTP workers on other hosts than the router); events per read.
    stream_heartbeat_seconds: float = Field(default=15.0, gt=0)
    stream_poll_seconds: float = Field(default=1.0, gt=0)
    stream_batch: int = Field(default=100, ge=1, le=1000)

    router_group_id: str = "renkei-router"
    # Records routed per database transaction. Bounded because SQLite serializes writers: the
    # urgent lane's transaction must never wait long behind a bulk one.
    router_batch_records: int = Field(default=100, ge=1, le=1000)
    # Tansu answers a group join after about half the session timeout; Apache Kafka's default
    # floor (group.min.session.timeout.ms) is 6 s.
    consumer_session_timeout_ms: int = 10000
    # How long the broker may hold a fetch with no data: the floor of POST->notification latency
    # on an idle hub (Tansu waits the whole time).
    consumer_fetch_max_wait_ms: int = 20
    # Routing table override: a JSON file of {event: {care-team-role: priority}}.
    routing_file: Path | None = None
    # Opt-in (Japanese default): no active Consent, no sharing. A region may choose opt-out.
    # Anything else is refused at start rather than read as opt-in.
    consent_default: Literal["opt-in", "opt-out"] = "opt-in"
    # Escalation (主治医・副主治医制): a stat acute change nobody has acknowledged after this many
    # minutes goes to the backup physician, after as many more to the care team's emergency
    # hospital, then to the region office (services/escalation). 0 turns escalation off.
    escalation_window_minutes: float = Field(default=10.0, ge=0)
    # How often the escalation timer looks for due steps (the lateness of a step at most).
    escalation_poll_seconds: float = Field(default=5.0, gt=0)
    # Japan Standard Time: due dates ("by the end of the next day") are local dates.
    timezone: str = "Asia/Tokyo"

    # The audit writer (consumers.audit): its own consumer group on renkei.audit, records
    # chained per database transaction, and a signed checkpoint of the chain head every N
    # records or T seconds, whichever comes first (only when the head moved).
    audit_group_id: str = "renkei-audit"
    audit_batch_records: int = Field(default=500, ge=1, le=5000)
    audit_checkpoint_records: int = Field(default=1000, ge=1)
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0)
    # Retention: `renkei audit archive` moves records stored longer ago than this to an
    # archive file under the data dir (audit-archive/), its chain head signed.
    audit_retention_days: int = Field(default=365 * 6, ge=1)
    # The relay re-drives audit rows sent but not stored by the writer within
    # relay_redeliver_after_seconds; after its start it looks this far back once.
    relay_audit_lookback_seconds: float = Field(default=24 * 3600.0, gt=0)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'renkei.sqlite3').resolve()}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def resolved_public_base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        scheme = "https" if self.tls_enabled else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def audit_archive_dir(self) -> Path:
        return self.data_dir / "audit-archive"


@lru_cache
def get_settings() -> Settings:
    return Settings()
