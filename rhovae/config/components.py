"""One way to name, configure and build components: posteriors, encoder/decoder pairs and datasets each have a
``Registry`` (``rhovae.registry``, which the model side imports without importing this package); this module collects
the registries and makes their options typed config options.

A component registers itself where it is defined::

    @POSTERIORS.register("diag")
    class DiagonalPosterior(Posterior): ...

and is then a choice of its config group (``posterior=diag``), built with one-line errors that name the accepted
names or options. Its options and their defaults are the keyword arguments of its constructor: ``defaults(name)``
reads them and ``component_config`` turns them into the typed dataclass of the config group option, so method
labels, config checks and Hydra never keep a second copy. Range checks of the options live in the constructor.

A named setting is a component with some options fixed, offered as a choice of its own so a sweep can list it
beside the others, and used as the method label of every run with those options::

    POSTERIORS.add_setting("rho_published_code", "rho", variant="published_code")

``group_registries`` finds the registries of the config groups; it imports the component modules (and with them
torch) only when it is called, so importing this module costs nothing.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import field, make_dataclass
from typing import Any, List

from ..registry import Registry


def group_registries() -> dict[str, Registry]:
    """The registry of each config group whose options are registered components, by group name."""
    from ..data import DATASETS
    from ..networks import NETWORKS
    from ..posteriors import POSTERIORS

    return {"posterior": POSTERIORS, "networks": NETWORKS, "dataset": DATASETS}


def _config_type(hint: Any) -> Any:
    """A constructor's annotation as OmegaConf accepts it: sequences become lists."""
    origin = typing.get_origin(hint)
    if origin in (collections.abc.Sequence, list, tuple):
        return List[typing.get_args(hint)[0]] if typing.get_args(hint) else List[Any]
    return hint


def _default(value: Any) -> Any:
    if isinstance(value, tuple):
        return field(default_factory=lambda: list(value))
    return value


_CONFIG_CLASSES: dict[tuple[str, str], type] = {}


def component_config(registry: Registry, name: str) -> type:
    """The dataclass of component ``name``'s config group option: ``name`` plus its constructor's options, typed
    (a named setting is an instance of its component's, ``setting_config``). One class per component and process,
    made at its first use."""
    if (registry.kind, name) not in _CONFIG_CLASSES:
        _CONFIG_CLASSES[registry.kind, name] = _make_component_config(registry, name)
    return _CONFIG_CLASSES[registry.kind, name]


def setting_config(registry: Registry, label: str) -> Any:
    """The config group option of the named setting ``label``: its component's dataclass, its options fixed."""
    component, fixed = registry.settings[label]
    return component_config(registry, component)(**fixed)


def _make_component_config(registry: Registry, name: str) -> type:
    factory = registry.factory(name)
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    fields = [("name", str, name)]
    for option, default in registry.defaults(name).items():
        fields.append((option, _config_type(hints.get(option, Any)), _default(default)))
    title = "".join(part.title() for part in name.split("_"))
    return make_dataclass(f"{title}{registry.kind.split('.')[0].title()}Config", fields)
