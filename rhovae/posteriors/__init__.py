"""Approximate posteriors q(z|x), interchangeable behind the ``Posterior`` contract (see ``base.py``)."""

from __future__ import annotations

from ..registry import build
from .ar1_normal import AR1Normal, ar1_scan, log1m_tanh_sq
from .base import Posterior
from .flows import FlowDistribution, IAFPosterior, PlanarPosterior, planar_step
from .gaussian import DiagonalPosterior, FullCovPosterior, RhoPosterior

POSTERIORS = {
    "diag": DiagonalPosterior,
    "rho": RhoPosterior,
    "fullcov": FullCovPosterior,
    "planar": PlanarPosterior,
    "iaf": IAFPosterior,
}


def build_posterior(name: str, in_features: int, latent_dim: int, **options) -> Posterior:
    """The posterior called ``name`` (a key of ``POSTERIORS``) on features of size ``in_features``."""
    return build("posterior", POSTERIORS, name, in_features, latent_dim, **options)


__all__ = [
    "AR1Normal",
    "DiagonalPosterior",
    "FlowDistribution",
    "FullCovPosterior",
    "IAFPosterior",
    "PlanarPosterior",
    "POSTERIORS",
    "Posterior",
    "RhoPosterior",
    "ar1_scan",
    "build_posterior",
    "log1m_tanh_sq",
    "planar_step",
]
