"""YAML read strictly: a configuration file is small, plain data, and read before anything else
runs, so whatever it could do beyond that is refused before it costs time or memory.

* **No aliases** (``*name``): a handful of nested aliases expands to billions of nodes (an "alias
  bomb"), and the refusal must come before the expansion is built, not after it. A configuration
  never needs one: write the value out.
* **No duplicate keys**: PyYAML keeps the last of two ``train:`` sections silently, dropping the
  first; which one the user meant is not ours to guess.
* **A size cap** (:data:`MAX_CONFIG_BYTES`) and **UTF-8 text only**: a binary file or a data file
  passed by mistake gets one line, not a decoding traceback.

Everything is ``yaml.SafeLoader`` otherwise: no Python objects are ever built.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from .errors import UserError

# A configuration is a few hundred bytes; 1 MiB leaves room for comments and long lists.
MAX_CONFIG_BYTES = 1 << 20


class _Refused(yaml.YAMLError):
    """A construct the strict loader does not accept (its message is the one line shown)."""


class StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases (when composing, before anything is expanded) and
    duplicate mapping keys."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(
                f"line {event.start_mark.line + 1}: the alias *{event.anchor} is not accepted "
                "(aliases can expand without bound); write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # SafeLoader refuses an unhashable key itself
            if key in seen:
                raise _Refused(
                    f"line {line}: the key {key!r} appears twice (also on line {seen[key]}); keep one"
                )
            seen[key] = line
        return super().construct_mapping(node, deep)


def strict_load(text: str, where: str, invalid_as_text: bool = False) -> Any:
    """``text`` parsed by :class:`StrictLoader`; a UserError naming ``where`` and the line if it
    is not plain YAML data. ``invalid_as_text``: text that is not YAML at all is returned as the
    string it is (a ``--set`` value), while a refused construct is still refused."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except _Refused as exc:
        raise UserError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        if invalid_as_text:
            return text
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{where} is not valid YAML{at}: {first}") from None
    except RecursionError:
        raise UserError(f"{where} nests too deeply to be a configuration") from None


def read_config_text(data: bytes, where: str) -> str:
    """A configuration file's bytes as text, or a UserError: too large, or not UTF-8 text."""
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(
            f"{where} is {len(data)} bytes, more than a configuration holds "
            f"(limit {MAX_CONFIG_BYTES}); pass a YAML configuration file"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{where} is not a text file (byte {exc.start} is not UTF-8); pass a YAML configuration file"
        ) from None
    if "\x00" in text:
        raise UserError(f"{where} is not a text file (it holds NUL bytes); pass a YAML configuration file")
    return text
