"""The ``Registry`` type: name -> constructor for one kind of component (posteriors, encoder/decoder pairs, datasets),
with one-line errors that name the accepted names or options.

The model side (``rhovae.data``, ``rhovae.networks``, ``rhovae.posteriors``) imports this module, which imports
nothing of the project but its errors; the configuration side (``rhovae.config.components``) collects the registries
and turns their constructors into typed config options. So the two never import each other.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError


class Registry(Mapping[str, Callable[..., Any]]):
    """Name -> constructor for one kind of component (``kind`` is its config key, e.g. ``posterior``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., Any]] = {}
        self.settings: dict[str, tuple[str, dict[str, Any]]] = {}  # label -> (component, fixed options)

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: make ``name`` build with the decorated class or function."""
        def add(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, factory)
            return factory
        return add

    def add(self, name: str, factory: Callable[..., Any]) -> None:
        if name in self._entries and self._entries[name] is not factory:
            raise ValueError(f"{self.kind} {name!r} is registered twice: {self._entries[name]} and {factory}")
        self._entries[name] = factory

    def add_setting(self, label: str, name: str, **options: Any) -> None:
        """Offer ``name`` with ``options`` fixed as the choice ``label``."""
        if label in self._entries:
            raise ValueError(f"{self.kind} setting {label!r}: the name is taken by a component")
        unknown = sorted(set(options) - set(self.defaults(name)))
        if unknown:
            raise ValueError(f"{self.kind} setting {label!r}: {name!r} has no option {', '.join(unknown)}")
        self.settings[label] = (name, dict(options))

    def label(self, options: Mapping[str, Any]) -> str:
        """A method label for a component's config (``name`` and options): the named setting, or the name, that
        fixes the most of ``options``, followed by every option that differs from it, e.g. ``rho``,
        ``rho_published_code`` or ``planar[flow_length=32]``. One config has one label however it was chosen."""
        name = options["name"]
        matching = [(label, fixed) for label, (component, fixed) in self.settings.items()
                    if component == name and all(_same(options.get(k), v) for k, v in fixed.items())]
        label, fixed = max(matching, key=lambda m: len(m[1]), default=(name, {}))
        reference = {**self.defaults(name), **fixed}
        changed = [f"{k}={v}".replace(" ", "") for k, v in sorted(options.items())
                   if k != "name" and not _same(v, reference.get(k, KeyError))]
        return f"{label}[{','.join(changed)}]" if changed else label

    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def factory(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise ConfigError(f"{self.kind}={name!r} is not known; accepted: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def defaults(self, name: str) -> dict[str, Any]:
        """The options of ``name`` (keyword arguments with a default, or keyword-only) and their defaults."""
        params = inspect.signature(self.factory(name)).parameters.values()
        return {p.name: (None if p.default is p.empty else p.default) for p in params
                if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}

    def build(self, name: str, *args: Any, **options: Any) -> Any:
        """``registry[name](*args, **options)``, naming the accepted names or options when they are wrong."""
        factory = self.factory(name)
        accepted = self.defaults(name)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ConfigError(f"{self.kind}={name!r} has no option {', '.join(unknown)}; "
                              f"accepted: {', '.join(accepted) or 'none'}")
        return factory(*args, **options)


def _same(value: Any, default: Any) -> bool:
    """Equality of a config value and a default, where a config's list stands for a signature's tuple."""
    return value == (list(default) if isinstance(default, tuple) else default)


def check_option(ok: bool, key: str, value: Any, accepted: str) -> None:
    """A component's own range check of one of its options, made in its constructor: a one-line ``ConfigError``
    naming the key (``networks.hidden``), the bad value and what is accepted."""
    if not ok:
        raise ConfigError(f"{key}={value!r} is not valid; accepted: {accepted}")
