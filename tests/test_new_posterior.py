"""The one-module promise: a posterior defined in a module of its own, with options none of the shipped ones have,
is a config option, checks its own options, trains, tests and is labelled, with no edit anywhere else."""

from __future__ import annotations

import importlib
import textwrap

import pytest
from hydra.core.config_store import ConfigStore

from helpers import TINY_OVERRIDES, compose
from rhovae.config import load_config, validate_config
from rhovae.errors import ConfigError
from rhovae.experiment import run_experiment
from rhovae.config.hydra_run import register_configs
from rhovae.posteriors import POSTERIORS

MODULE = '''
"""A throwaway posterior: N(mu, width^2 I) with a fixed width, its own option."""
import torch
from torch import nn
from torch.distributions import Independent, Normal

from rhovae.posteriors import POSTERIORS, Posterior
from rhovae.posteriors.base import check_option


@POSTERIORS.register("throwaway")
class FixedWidthPosterior(Posterior):
    def __init__(self, in_features: int, latent_dim: int, width: float = 0.5, shift: int = 0):
        super().__init__(in_features, latent_dim)
        check_option(width > 0, "width", width, "a number > 0")
        self.width, self.shift = width, shift
        self.loc = nn.Linear(in_features, latent_dim)

    def heads(self, h):
        return [self.loc(h) + self.shift]

    def parameter_sizes(self):
        return [self.latent_dim]

    def assemble(self, pieces):
        return Independent(Normal(pieces[0], torch.full_like(pieces[0], self.width)), 1)
'''


@pytest.fixture
def throwaway(tmp_path, monkeypatch):
    package = tmp_path / "throwaway_package"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fixed_width.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("throwaway_package.fixed_width")
    register_configs()
    yield
    POSTERIORS._entries.pop("throwaway")
    ConfigStore.instance().repo["posterior"].pop("throwaway.yaml")


def test_a_posterior_with_options_of_its_own_trains_with_no_other_edit(throwaway, data_root, tmp_path):
    overrides = [f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES,
                 "trainer.epochs=1", "posterior=throwaway"]
    with pytest.raises(ConfigError, match=r"^posterior.width=-1.0 is not valid; accepted: a number > 0$"):
        validate_config(load_config(compose([*overrides, "posterior.width=-1.0"])))
    summary = run_experiment(compose([*overrides, "posterior.width=0.3"]), tmp_path / "run")
    assert summary["status"] == "completed" and summary["method"] == "throwaway[width=0.3]"
    assert summary["test/nll"] < -summary["test/elbo"] + 5 and summary["config"]["posterior"]["shift"] == 0
