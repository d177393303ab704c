"""Config YAML read strictly: a key given twice (any depth) or renamed fails, naming it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pipeline.core.errors import ConfigError

MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """The one document in `path`; a duplicate key, bad syntax or non-UTF-8 text fails in one
    line naming the file (PyYAML alone keeps the last of two equal keys without a word)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (line {data[:err.start].count(10) + 1}, "
                          f"byte {data[err.start:err.start + 1]!r}); save it as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror or err}") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        check_unique_keys(node, path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: "
                          f"{err.problem or err.context or type(err).__name__}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()


def check_unique_keys(node: Node, path: Path, prefix: str = "",
                      seen: set[int] | None = None) -> None:
    """Every mapping under `node` states each key once (a key merged in by `<<: *anchor` may
    be overridden, and several `<<` all merge: that is what they are for)."""
    seen = set() if seen is None else seen
    if id(node) in seen:  # an alias of a node checked already
        return
    seen.add(id(node))
    if isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            check_unique_keys(item, path, f"{prefix}[{i}]", seen)
    if not isinstance(node, MappingNode):
        return
    first: dict[tuple[str, str], int] = {}
    for key, value in node.value:
        if not isinstance(key, ScalarNode):
            raise ConfigError(f"{path}: line {key.start_mark.line + 1}: a mapping key must "
                              "be a plain value, not a list or mapping")
        line = key.start_mark.line + 1
        name = "<<" if key.tag == MERGE_TAG else key.value
        full = f"{prefix}.{name}" if prefix else name
        ident = (key.tag, key.value)
        if ident in first and key.tag != MERGE_TAG:
            raise ConfigError(f"{path}: key {full!r} appears twice (lines {first[ident]} and "
                              f"{line}); YAML would silently keep the second; delete one")
        first[ident] = line
        if key.tag != MERGE_TAG:
            check_unique_keys(value, path, full, seen)


def refuse_renamed(raw: Mapping[str, Any], renamed: Mapping[str, str]) -> None:
    """A dotted `section.key` that exists under an old name fails with a pointer to the new."""
    for old, new in renamed.items():
        section, _, key = old.partition(".")
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise ConfigError(f"{old}: renamed to {new}")
