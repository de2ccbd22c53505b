"""Create the service's Kafka topics (idempotent), with kafka-python's admin client."""

from __future__ import annotations

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.settings import Settings


class TopicError(Exception):
    """Topics could not be created; the message says where and why."""


def topic_specs(settings: Settings) -> list[NewTopic]:
    """The topics the worker reads and writes, with their configuration."""
    partitions = settings.topic_partitions
    return [
        # LogAppendTime: the broker stamps each event when it is appended, which is what
        # the append -> applied latency is measured from.
        NewTopic(
            settings.touchpoints_topic,
            partitions,
            1,
            topic_configs={"message.timestamp.type": "LogAppendTime"},
        ),
        NewTopic(settings.dlq_topic, partitions, 1, topic_configs={"retention.ms": str(30 * 86400 * 1000)}),
        NewTopic(settings.alerts_topic, partitions, 1),
        NewTopic(settings.erasure_topic, 1, 1),
    ]


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
