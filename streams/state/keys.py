"""The one Redis key schema. Every adapter, the erasure and the CLI name keys through it.

Everything one batch commit touches belongs to one Kafka partition and lives in one Redis
Cluster hash slot, the partition's tag ``{<prefix>:p<N>}``:

=================================  ======  ===================================================
key                                type    holds
=================================  ======  ===================================================
``{<prefix>:p<N>}:meta``           hash    ``epoch`` (fencing), ``seq`` (commits), ``offset``
                                           (last applied), ``high`` / ``wm`` (the clock)
``{<prefix>:p<N>}:c:<customer>``   string  the customer's state (``streams/state/codec.py``)
``{<prefix>:p<N>}:due``            zset    customer -> when something is next due for them
``{<prefix>:p<N>}:outbox``         list    alerts and tombstones waiting to be published
``{<prefix>:p<N>}:agg``            hash    funnel counts and value totals of the partition
``{<prefix>:p<N>}:gaps:<day>``     hash    gap counters of one event-time day
``{<prefix>:p<N>}:orders``         hash    customer -> order summary, for the CLV fit
``{<prefix>:p<N>}:examples``       stream  settled propensity examples for the learner
``{<prefix>:p<N>}:erased``         hash    pseudonym -> when the customer was erased
=================================  ======  ===================================================

Outside the partitions: ``<prefix>:dir:<bucket>`` (hash, pseudonym -> partition: where a
customer lives, so a lookup never scans), ``<prefix>:topology`` (the partition count),
``<prefix>:model`` (the propensity snapshot), ``<prefix>:clv:*`` (CLV model versions) and
``<prefix>:spend`` (hash, the marketing-spend table: ``<channel>|<day number>`` -> ``<cents> <partition>
<offset>`` of the message that set it, and ``{offset}:<partition>`` -> the last offset of the spend
topic handled; one key, so a single-slot script writes it on Redis Cluster too).
Aggregates are summed over the partitions when read.
"""

from __future__ import annotations

import zlib

DIRECTORY_BUCKETS = 4096  # ~250 customers a bucket at 1 M: small hashes (listpacks)


class Keys:
    """Key names under one prefix (``JOURNEY_REDIS_PREFIX``, e.g. ``jt:v2``)."""

    def __init__(self, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"the Redis prefix must not contain {{ or }} (it is part of hash tags): {prefix!r}")
        self.prefix = prefix

    def tag(self, partition: int) -> str:
        """The hash tag shared by every key of a partition."""
        return f"{{{self.prefix}:p{partition}}}"

    def meta(self, partition: int) -> str:
        return f"{self.tag(partition)}:meta"

    def customer(self, partition: int, customer_id: str) -> str:
        return f"{self.tag(partition)}:c:{customer_id}"

    def due(self, partition: int) -> str:
        return f"{self.tag(partition)}:due"

    def outbox(self, partition: int) -> str:
        return f"{self.tag(partition)}:outbox"

    def agg(self, partition: int) -> str:
        return f"{self.tag(partition)}:agg"

    def gaps(self, partition: int, day: int) -> str:
        return f"{self.tag(partition)}:gaps:{day}"

    def orders(self, partition: int) -> str:
        return f"{self.tag(partition)}:orders"

    def examples(self, partition: int) -> str:
        return f"{self.tag(partition)}:examples"

    def erased(self, partition: int) -> str:
        return f"{self.tag(partition)}:erased"

    def directory(self, pseudonym: bytes) -> str:
        """The directory bucket holding a customer's partition (by their keyed pseudonym)."""
        return f"{self.prefix}:dir:{zlib.crc32(pseudonym) % DIRECTORY_BUCKETS}"

    @property
    def topology(self) -> str:
        return f"{self.prefix}:topology"

    @property
    def model(self) -> str:
        return f"{self.prefix}:model"

    @property
    def model_examples(self) -> str:
        """Stream of the newest examples the learner learned, in its order (``journey model validate``)."""
        return f"{self.prefix}:model:examples"

    @property
    def clv_model(self) -> str:
        return f"{self.prefix}:clv:model"

    @property
    def clv_history(self) -> str:
        return f"{self.prefix}:clv:history"

    @property
    def clv_version(self) -> str:
        return f"{self.prefix}:clv:version"

    @property
    def spend(self) -> str:
        return f"{self.prefix}:spend"

    def patterns(self) -> tuple[str, str]:
        """SCAN patterns matching every key under the prefix (for cleanup tools only)."""
        return f"{{{self.prefix}:p*", f"{self.prefix}:*"
