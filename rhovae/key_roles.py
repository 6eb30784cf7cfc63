"""What a config key is for, marked where the key is defined (field metadata on the typed configs).

Most keys define what a run measures and carry no mark. Some say only how it runs (``RUNTIME``: device, threads,
where the data is, the logger); some say how long it trains or how its final scores are estimated
(``ESTIMATION``); some only split the test evaluation's work or add an analysis to it (``WORK_SPLIT``); one
batches the validation as well (``VALIDATION_BATCHING``). Each mark is two flags: whether a resumed run may
change the key, and whether runs that differ in it are different methods. Resume checks and result tables read
the flags through ``keys_with``, so no list of keys is kept by hand:

    epochs: int = field(default=100, metadata=ESTIMATION)
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Mapping

# may_change_on_resume: a resumed run may take a new value; is_factor: runs that differ in it are different methods
RUNTIME = {"may_change_on_resume": True, "is_factor": False}  # how a run executes
ESTIMATION = {"may_change_on_resume": True, "is_factor": True}  # how long it trains, how its scores are estimated
WORK_SPLIT = {"may_change_on_resume": True, "is_factor": False}  # how the test evaluation batches its work, or an
#                                                                  extra analysis on top of it (the gaps)
VALIDATION_BATCHING = {"may_change_on_resume": False, "is_factor": False}  # batches the per-epoch validation too


def keys_with(role: str, value: bool, schema: type, sections: Mapping[str, type] | None = None) -> tuple[str, ...]:
    """The dotted keys (or whole sections) of ``schema`` whose field metadata sets ``role`` to ``value``.

    Fields typed as a dataclass are walked into; ``sections`` gives the dataclass of a field typed ``Any``
    (a config group filled by the option chosen, such as ``dataset``).
    """
    found: list[str] = []
    sections = sections or {}

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if f.metadata.get(role) == value:
                found.append(key)
                continue
            inner = sections.get(key) or (hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
            if inner is not None:
                walk(inner, f"{key}.")

    walk(schema, "")
    return tuple(found)
