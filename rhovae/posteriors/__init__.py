"""Approximate posteriors q(z|x), interchangeable behind the ``Posterior`` contract (see ``base.py``).

Every module of this package is imported here, and each registers its posteriors in ``POSTERIORS``: adding a
posterior is one new module, with no edit here; it is an option of the ``posterior`` config group at once
(``rhovae.config.components.component_config``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from .ar1_normal import AR1Normal, ar1_scan, log1m_tanh_sq
from .base import POSTERIORS, Posterior
from .flows import FlowDistribution, FlowPosterior, IAFPosterior, PlanarPosterior, planar_step
from .gaussian import DiagonalPosterior, FullCovPosterior, RhoPosterior
from .published_rho import RHO_VARIANTS, PublishedCodeRhoPosterior, RandomWalkNormal, rho_posterior

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def build_posterior(name: str, in_features: int, latent_dim: int, **options) -> Posterior:
    """The posterior called ``name`` (a key of ``POSTERIORS``) on features of size ``in_features``."""
    return POSTERIORS.build(name, in_features, latent_dim, **options)


def posterior_label(options: Mapping[str, Any]) -> str:
    """A posterior config's method label (``Registry.label``): ``rho``, ``rho_published_code``,
    ``planar[flow_length=32]``; what tells two methods apart in W&B groups and result tables."""
    return POSTERIORS.label(options)


__all__ = [
    "AR1Normal",
    "DiagonalPosterior",
    "FlowDistribution",
    "FlowPosterior",
    "FullCovPosterior",
    "IAFPosterior",
    "PlanarPosterior",
    "PublishedCodeRhoPosterior",
    "RHO_VARIANTS",
    "RandomWalkNormal",
    "POSTERIORS",
    "Posterior",
    "RhoPosterior",
    "ar1_scan",
    "build_posterior",
    "posterior_label",
    "log1m_tanh_sq",
    "planar_step",
    "rho_posterior",
]
