"""Saved configs (in checkpoints, summaries, W&B runs): read in today's keys, and the rules for what a command may
change about a run that already exists.

* ``upgrade``: a config saved by an earlier version in today's keys (a section renamed since moves to its name).
* ``with_todays_defaults``: that, with the keys added to the project since taking their defaults.
* ``resumed_config``: what a resumed run continues with; only keys flagged ``resumable`` in the schema may change.
* ``rescoring_config``: what a script that re-scores a finished run (``scripts/evaluate.py``, ``scripts/gaps.py``)
  scores with; only the sections it estimates with and keys that are not factors may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from omegaconf import OmegaConf

from ..errors import ConfigError
from .keys import flatten, in_sections, reject_unknown_keys, unflatten
from .schema import FACTOR, RESUMABLE, keys_with, section_defaults

RENAMED_SECTIONS = {"decoder": "networks"}  # old name -> today's; the old one is accepted until the next release

# keys (or whole sections) a resumed run may change: how it executes, how long it trains, how it is scored
RESUMABLE_KEYS = keys_with(RESUMABLE, True)
# keys (or whole sections) that only say how a command runs or batches its work: never a difference of method
NOT_FACTORS = keys_with(FACTOR, False)


def upgrade(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version (in a checkpoint, a summary, a W&B run) in today's keys: a section
    renamed since (``RENAMED_SECTIONS``) moves to its new name. Other keys are left as they are."""
    upgraded = dict(config)
    for old, new in RENAMED_SECTIONS.items():
        if old in upgraded and new not in upgraded:
            upgraded[new] = upgraded.pop(old)
    return upgraded


def with_todays_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """``upgrade(saved)`` with every key added to the project after it was saved at its default: a key that changes
    the method is added with the default that keeps the behaviour from before it, so that is what the run ran with.
    ``${...}`` are left unresolved."""
    merged = OmegaConf.merge(OmegaConf.create(section_defaults()), OmegaConf.create(upgrade(saved)))
    return OmegaConf.to_container(merged)


def resumed_config(saved: Mapping[str, Any], current: Mapping[str, Any], given: Iterable[str] | None,
                   run_dir: Path) -> dict[str, Any]:
    """The config a resumed run continues with: the checkpoint's, with the given keys that may change applied.

    ``given`` lists the keys the user set for this command (``None``: treat every key of ``current`` as given).
    A given key that differs from the checkpoint and would train a different model, or on different data, is
    refused. Keys the checkpoint does not have (added to the project after it was written) take ``current``'s.
    """
    old, new = flatten(upgrade(saved)), flatten(current)
    given = set(new) if given is None else set(given)
    changed = sorted(k for k in given & set(new) if k in old and old[k] != new[k])
    refused = [k for k in changed if not in_sections(k, RESUMABLE_KEYS)]
    if refused:
        diffs = "; ".join(f"{k}={new[k]!r} (checkpoint: {old[k]!r})" for k in refused)
        allowed = ", ".join(k for k in sorted(old.keys() | new.keys()) if in_sections(k, RESUMABLE_KEYS))
        raise ConfigError(f"cannot resume {run_dir}: the config differs from its checkpoint in {diffs}; nothing was "
                          f"changed. Keys that may change on resume: {allowed}")
    merged = {**new, **old, **{k: new[k] for k in changed}}
    # a config group whose option differs between the two (logger=none in the checkpoint, wandb by default now) is
    # wholly one option's: the new one where this command switched it, else the checkpoint's
    for key in sorted(k for k in old if k.endswith(".name") and k in new and old[k] != new[k]):
        group = key.rpartition(".")[0]
        source = new if key in changed else old
        merged = {k: v for k, v in merged.items() if not in_sections(k, [group])}
        merged.update({k: v for k, v in source.items() if in_sections(k, [group])})
    return unflatten(merged)


# the sections that say how a finished run's numbers are estimated; each re-scoring script names those it uses
ESTIMATING_SECTIONS = ("eval", "gaps", "ais")


def rescoring_config(saved: Mapping[str, Any], overrides: Sequence[str], may_override: Sequence[str],
                     run_dir: Path) -> dict[str, Any]:
    """A finished run's saved config with a re-scoring script's ``overrides`` (``eval.iw_samples=500``) on top.

    An unknown key is refused with the closest known one, and so is a key outside ``may_override`` (the sections
    or keys the script estimates with) and the keys that only say how a command runs: anything else would score a
    different model or different data than the run trained, and write its numbers beside the run's.
    """
    base = OmegaConf.create(with_todays_defaults(saved))
    given = flatten(OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))
    reject_unknown_keys(given, flatten(OmegaConf.to_container(base)), where="of the run's configuration")
    accepted = [*may_override, *(k for k in NOT_FACTORS if not in_sections(k, ESTIMATING_SECTIONS))]
    refused = sorted(k for k in given if not in_sections(k, accepted))
    if refused:
        shown = ", ".join(f"{k}.*" if k in ESTIMATING_SECTIONS else k for k in accepted)
        raise ConfigError(f"{', '.join(refused)} would change the model or data that {run_dir} trained; nothing was "
                          f"written. Accepted here: {shown}")
    return OmegaConf.to_container(OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides))))
