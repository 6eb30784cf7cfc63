"""trainer.flush_denormal: Adam's first moment of a weight that stops getting gradients sticks at the smallest
subnormal without it and reaches an exact zero with it; a run's preparation and the loading of a trained run for
evaluation both put the process in the mode the config says."""

from __future__ import annotations

import pytest
import torch

from helpers import TINY_OVERRIDES, compose, flushing_subnormals
from rhovae.config import load_config
from rhovae.experiment import prepare
from rhovae.trainer import make_optimizer

@pytest.fixture(autouse=True)
def _restore_mode():
    yield
    torch.set_flush_denormal(False)


def first_moment_after_gradients_stop(flush: bool) -> torch.Tensor:
    torch.set_flush_denormal(flush)
    weight = torch.nn.Parameter(torch.ones(64))
    optimizer = make_optimizer(torch.nn.ParameterList([weight]), lr=1e-3)
    weight.grad = torch.full_like(weight, 0.5)
    optimizer.step()
    for _ in range(1500):  # 0.9^1500 * 0.05 is far below the smallest subnormal, 1.4e-45
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
    return optimizer.state[weight]["exp_avg"]


def test_adams_first_moment_sticks_at_a_subnormal_unless_flushed():
    tiny = torch.finfo(torch.float32).tiny
    stuck = first_moment_after_gradients_stop(flush=False)
    assert ((stuck != 0) & (stuck.abs() < tiny)).all()  # 0.9 x the smallest subnormal rounds back to it
    assert (first_moment_after_gradients_stop(flush=True) == 0).all()


@pytest.mark.parametrize("flush", [True, False])
def test_a_run_is_prepared_in_the_mode_its_config_says(data_root, flush):
    torch.set_flush_denormal(not flush)
    config = load_config(compose([*TINY_OVERRIDES, "posterior=diag", "dataset=mnist", f"dataset.root={data_root}",
                                  "logger=none", f"trainer.flush_denormal={str(flush).lower()}"]))
    prepare(config, torch.device("cpu"))
    assert flushing_subnormals() == flush
