"""``householder``: a diagonal Gaussian pushed through K Householder reflections (Tomczak & Welling 2016).

Each reflection z <- (I - 2 v v^T / |v|^2) z has a per-image vector v from a linear head on the encoder features
(pyro's ``ConditionedHouseholder``). Reflections are orthogonal, so log|det J| = 0 and the density of a sample is
its base density: K reflections turn the mean-field base into a Gaussian whose covariance axes need not be the
coordinate axes (d reflections reach any covariance). The KL is the flows' Monte Carlo estimate.
"""

from __future__ import annotations

import torch
from pyro.distributions.transforms.householder import ConditionedHouseholder
from torch import nn

from .base import POSTERIORS, check_option
from .flows import FlowPosterior, Step, pyro_step


@POSTERIORS.register("householder")
class HouseholderPosterior(FlowPosterior):
    """Diagonal Gaussian base + ``flow_length`` Householder reflections, each vector from its own linear head."""

    def __init__(self, in_features: int, latent_dim: int, flow_length: int = 4, min_std: float = 1e-4,
                 kl_samples: int = 1, step_gradient: float = 1.0):
        super().__init__(in_features, latent_dim, min_std, kl_samples, step_gradient)
        check_option(flow_length >= 0, "flow_length", flow_length, "an integer >= 0")
        self.flow_length = flow_length
        self.vectors = nn.ModuleList(nn.Linear(in_features, latent_dim) for _ in range(flow_length))

    @property
    def step_size(self) -> int:
        return self.flow_length * self.latent_dim

    def step_parameters(self, h: torch.Tensor) -> torch.Tensor:
        """The K reflection vectors, one after another: ``[B, K d]``."""
        return torch.cat([head(h) for head in self.vectors], dim=-1) if self.flow_length else h[..., :0]

    def steps_from(self, params: torch.Tensor) -> list[Step]:
        vectors = params.unflatten(-1, (self.flow_length, self.latent_dim))
        return [pyro_step(ConditionedHouseholder(vectors[..., k:k + 1, :])) for k in range(self.flow_length)]
