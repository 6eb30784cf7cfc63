"""Dotted config keys: nested configs flattened to ``{"trainer.lr": 0.001}`` and back, sections, and the one-line
refusal of a key that does not exist (naming the closest one that does)."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Mapping

from ..errors import ConfigError


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"trainer.lr": 0.001, ...}`` (keys joined with dots, after ``prefix``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of ``flatten``: ``{"trainer.lr": 0.001}`` as ``{"trainer": {"lr": 0.001}}``."""
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def in_sections(key: str, sections: Iterable[str]) -> bool:
    """Whether the dotted ``key`` is one of ``sections`` or lies inside one of them."""
    return any(key == s or key.startswith(f"{s}.") for s in sections)


def reject_unknown_keys(keys: Iterable[str], known: Iterable[str], where: str = "") -> None:
    """One line naming the first key that is not in ``known`` and the closest known key."""
    known = sorted(set(known))
    unknown = sorted(set(keys) - set(known))
    if not unknown:
        return
    key = unknown[0]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    section = key.rpartition(".")[0]
    siblings = [k for k in known if k.rpartition(".")[0] == section]
    hint = f"did you mean {close[0]}?" if close else f"known keys here: {', '.join(siblings) or ', '.join(known)}"
    more = f" (and {len(unknown) - 1} more: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
    raise ConfigError(f"{key} is not a key {where or 'of the configuration'}; {hint}{more}")
