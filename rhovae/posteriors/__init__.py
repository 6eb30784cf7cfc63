"""Approximate posteriors q(z|x), interchangeable behind the ``Posterior`` contract (see ``base.py``)."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

from ..errors import ConfigError
from ..registry import build
from .ar1_normal import AR1Normal, ar1_scan, log1m_tanh_sq
from .base import Posterior
from .flows import FlowDistribution, IAFPosterior, PlanarPosterior, planar_step
from .gaussian import DiagonalPosterior, FullCovPosterior, RhoPosterior
from .published_rho import PublishedCodeRhoPosterior, RandomWalkNormal

RHO_VARIANTS = {"paper": RhoPosterior, "published_code": PublishedCodeRhoPosterior}


def rho_posterior(in_features: int, latent_dim: int, *, min_std: float = 1e-4, variant: str = "paper") -> Posterior:
    """``rho``: the distribution the paper describes (``paper``), or its published code's (``published_code``)."""
    if variant not in RHO_VARIANTS:
        raise ConfigError(f"posterior.variant={variant!r} is not known; accepted: {', '.join(RHO_VARIANTS)}")
    return RHO_VARIANTS[variant](in_features, latent_dim, min_std=min_std)


POSTERIORS = {
    "diag": DiagonalPosterior,
    "rho": rho_posterior,
    "fullcov": FullCovPosterior,
    "planar": PlanarPosterior,
    "iaf": IAFPosterior,
}


def build_posterior(name: str, in_features: int, latent_dim: int, **options) -> Posterior:
    """The posterior called ``name`` (a key of ``POSTERIORS``) on features of size ``in_features``."""
    return build("posterior", POSTERIORS, name, in_features, latent_dim, **options)


def posterior_label(options: Mapping[str, Any]) -> str:
    """A posterior config's name plus every option that differs from its default, e.g. ``rho`` or
    ``rho[variant=published_code]``: what tells two methods apart in W&B groups and result tables."""
    name = options["name"]
    params = inspect.signature(POSTERIORS[name]).parameters
    changed = []
    for key, value in sorted(options.items()):
        if key == "name":
            continue
        default = params[key].default if key in params else inspect.Parameter.empty
        if value != (list(default) if isinstance(default, tuple) else default):
            changed.append(f"{key}={value}".replace(" ", ""))
    return f"{name}[{','.join(changed)}]" if changed else name


__all__ = [
    "AR1Normal",
    "DiagonalPosterior",
    "FlowDistribution",
    "FullCovPosterior",
    "IAFPosterior",
    "PlanarPosterior",
    "PublishedCodeRhoPosterior",
    "RandomWalkNormal",
    "POSTERIORS",
    "Posterior",
    "RhoPosterior",
    "ar1_scan",
    "build_posterior",
    "posterior_label",
    "log1m_tanh_sq",
    "planar_step",
]
