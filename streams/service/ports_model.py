"""The ports of the propensity learner: model snapshots and the settled examples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from models.propensity import Example
from models.watermark import Clock


class SnapshotRefused(Exception):
    """A snapshot failed its integrity or version check; the message says which."""


@dataclass(slots=True)
class Snapshot:
    """A model checkpoint: the model, its evaluation, and how far it has learned.

    ``version`` counts the examples learned. ``position`` is, per partition, the id of the
    last example learned from its stream; ``learned_until`` the settlement watermark below
    which every example has been learned.
    """

    version: int
    kind: str
    position: dict[int, str]
    learned_until: int
    model: Any
    validator: Any
    report: dict[str, Any]


class ModelStore(Protocol):
    async def save(self, snapshot: Snapshot, *, expected_version: int) -> bool:
        """Write a checkpoint unless another learner wrote one since ``expected_version`` (-1: none)."""
        ...

    async def version(self) -> int | None: ...

    async def report(self) -> dict[str, Any] | None: ...

    async def load(self) -> Snapshot | None:
        """The newest snapshot, verified; None if none. Raises :class:`SnapshotRefused`."""
        ...

    async def archive(self, examples: Sequence[Example], *, keep: int) -> None:
        """Append examples, in the order they were learned, to the archive ``journey model validate``
        replays; keep only the newest ``keep``."""
        ...

    async def learned_examples(self) -> list[Example]:
        """The archived examples, oldest first."""
        ...


class ExampleSource(Protocol):
    """The partitions' streams of settled examples."""

    async def partitions(self) -> int: ...

    async def clocks(self) -> dict[int, Clock]: ...

    async def examples(self, partition: int, after: str, count: int) -> list[tuple[str, Example]]:
        """Up to ``count`` examples of a partition after stream id ``after``, oldest first, with their ids."""
        ...

    async def trim_examples(self, partition: int, upto: str) -> None: ...
