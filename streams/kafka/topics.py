"""Create the service's Kafka topics (idempotent), with kafka-python's admin client."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings


class TopicError(Exception):
    """Topics could not be created; the message says where and why."""


DAY_MS = 86_400_000
#: Retention of each topic the worker creates (the README's "Personal data" section lists them).
RETENTION_DAYS = {"touchpoints": 7, "dlq": 30, "alerts": 7, "erasures": 30, "spend": 30}


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The topics the worker reads and writes, with their configuration."""
    partitions = settings.topic_partitions

    def retention(kind: str) -> str:
        return str(RETENTION_DAYS[kind] * DAY_MS)

    return [
        # LogAppendTime: the broker stamps each event when it is appended, which is what
        # the append -> applied latency is measured from.
        NewTopic(settings.touchpoints_topic, partitions, 1, topic_configs={
            "message.timestamp.type": "LogAppendTime", "retention.ms": retention("touchpoints")}),
        NewTopic(settings.dlq_topic, partitions, 1, topic_configs={"retention.ms": retention("dlq")}),
        # compact + delete: a tombstone (an erased customer) removes their alerts at the next compaction,
        # and alerts older than the retention go anyway
        NewTopic(settings.alerts_topic, partitions, 1, topic_configs={
            "cleanup.policy": "compact,delete", "retention.ms": retention("alerts"),
            "segment.ms": str(DAY_MS), "min.cleanable.dirty.ratio": "0.1"}),
        NewTopic(settings.erasure_topic, 1, 1, topic_configs={"retention.ms": retention("erasures")}),
        # Key <channel>|<day>, each message THE spend of that day: compaction keeps the latest per key,
        # and a small table needs no more than one partition (one topic order for every correction).
        NewTopic(settings.spend_topic, 1, 1, topic_configs={
            "cleanup.policy": "compact,delete", "retention.ms": retention("spend"),
            "segment.ms": str(DAY_MS), "min.cleanable.dirty.ratio": "0.1"}),
    ]


def partition_count(settings: Settings) -> int:
    """How many partitions the touchpoints topic has."""
    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.app_id}-admin",
                             request_timeout_ms=15_000)
    try:
        meta = admin.describe_topics([settings.touchpoints_topic])
        return len(meta[0]["partitions"])
    finally:
        admin.close()


def ensure_topics(settings: Settings) -> list[str]:
    """Create missing topics; return the names of those created."""
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.app_id}-admin",
            request_timeout_ms=15_000,
        )
    except KafkaError as exc:
        raise TopicError(
            f"cannot reach Kafka at {settings.kafka_bootstrap}: {exc}. "
            "Is it running? Start the local stack with `journey stack up`."
        ) from None
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topic_specs(settings) if t.name not in existing]
        created = []
        for topic in missing:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass  # another worker won the race
        return created
    except KafkaError as exc:
        raise TopicError(f"cannot create topics on {settings.kafka_bootstrap}: {exc}") from None
    finally:
        admin.close()
