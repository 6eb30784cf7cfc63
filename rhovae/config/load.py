"""One typed path for every run: ``load_config`` turns what Hydra composed, or a config saved in a checkpoint, into
a ``RunConfig`` whose sections are dataclasses (``config.trainer.lr``, ``config.posterior.flow_length``).

Fresh, resumed and re-scored runs all go through it: the schema's dataclasses are merged with the given values,
each component group typed by the option it names, so a saved config gets the same types, defaults for keys added
to the project since it was saved, and the same refusals as a fresh one. ``as_dict`` is the plain, resolved dict
that checkpoints, summary.json and W&B store.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..errors import ConfigError
from .components import component_config, group_registries
from .saved import upgrade
from .schema import GROUP_SCHEMAS, LOGGER_CONFIGS, RunConfig

COMPONENT_GROUPS = ("dataset", "posterior", "networks", "logger")


def option_schema(group: str, name: str) -> type:
    """The dataclass of option ``name`` of config group ``group``."""
    if group in GROUP_SCHEMAS:
        return GROUP_SCHEMAS[group]
    options = LOGGER_CONFIGS if group == "logger" else group_registries()[group]
    if name not in options:
        raise ConfigError(f"{group}.name={name!r} is not valid; accepted: {', '.join(options)}")
    return LOGGER_CONFIGS[name] if group == "logger" else component_config(options, name)


def load_config(source: DictConfig | Mapping[str, Any]) -> RunConfig:
    """The typed ``RunConfig`` of a composed config or a saved one (upgraded to today's keys first); interpolations
    are resolved. A key the schema does not have, or a value of the wrong type, is one ``ConfigError`` line."""
    # as plain values: a composed config's nodes carry the dataclasses of the process that made them (a sweep's
    # launcher pickles them into its workers), and only the values matter here
    plain = OmegaConf.to_container(source, resolve=True) if isinstance(source, DictConfig) else dict(source)
    given = OmegaConf.create(upgrade(plain))
    typed = OmegaConf.structured(RunConfig)
    for group in COMPONENT_GROUPS:
        name = OmegaConf.select(given, f"{group}.name", default=None)
        if name is None:
            raise ConfigError(f"{group}.name is missing; the config names no {group} option")
        schema = option_schema(group, name)
        options = {f.name for f in dataclasses.fields(schema)}
        unknown = sorted(set(given[group]) - options)
        if unknown:
            raise ConfigError(f"{group}={name!r} has no option {', '.join(unknown)}; accepted: "
                              f"{', '.join(sorted(options - {'name'})) or 'none'}")
        typed[group] = OmegaConf.structured(schema)
    try:
        return OmegaConf.to_object(OmegaConf.merge(typed, given))
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"{key or 'the configuration'} is not valid: {str(err).splitlines()[0]}") from None


def as_dict(config: RunConfig) -> dict[str, Any]:
    """The run's config as a plain nested dict, as checkpoints, summary.json and W&B store it."""
    return dataclasses.asdict(config)


def component_options(section: Any) -> dict[str, Any]:
    """A component group's options (its section without ``name``), as constructor keyword arguments."""
    return {k: v for k, v in dataclasses.asdict(section).items() if k != "name"}
