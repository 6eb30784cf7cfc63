"""Name -> constructor lookup with one-line errors, shared by the posterior and network registries."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from .errors import ConfigError


def build(kind: str, registry: Mapping[str, Callable[..., Any]], name: str, *args, **options) -> Any:
    """Call ``registry[name](*args, **options)``, naming the accepted names or options when they are wrong."""
    if name not in registry:
        raise ConfigError(f"{kind}={name!r} is not known; accepted: {', '.join(sorted(registry))}")
    factory = registry[name]
    params = inspect.signature(factory).parameters
    accepted = [p for p in params.values() if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
    unknown = sorted(set(options) - {p.name for p in accepted})
    if unknown:
        raise ConfigError(
            f"{kind}={name!r} has no option {', '.join(unknown)}; "
            f"accepted: {', '.join(p.name for p in accepted) or 'none'}"
        )
    return factory(*args, **options)
