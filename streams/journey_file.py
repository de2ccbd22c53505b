"""Load a journey map file (YAML), reporting problems with the line of the entry they concern."""

from __future__ import annotations

from pathlib import Path

import yaml

from models.journey_map import JourneyMap, MapError, format_path, parse_journey_map


class MapFileError(Exception):
    """A journey map file that cannot be used; the message names file, line and entry."""


def _lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
            out[sub] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, i), out)


def load_journey_map(path: Path) -> JourneyMap:
    """Read, parse and validate a journey map file.

    Raises
    ------
    MapFileError
        With one line per problem: ``file:line: entry: what is wrong``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MapFileError(f"{path}: cannot read the journey map: {exc.strerror or exc}") from None
    try:
        doc = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise MapFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple[str | int, ...], int] = {}
    if root is not None:
        _lines(root, (), lines)
    try:
        return parse_journey_map(doc)
    except MapError as exc:
        messages = []
        for entry, message in exc.problems:
            line = next((lines[entry[:n]] for n in range(len(entry), -1, -1) if entry[:n] in lines), None)
            where = f"{path}:{line}" if line else str(path)
            messages.append(f"{where}: {format_path(entry)}: {message}")
        raise MapFileError("\n".join(messages)) from None
