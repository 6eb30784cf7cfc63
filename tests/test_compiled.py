"""The compiled training loss is checked against eager PyTorch: a wrong kernel stops the run, rounding does not,
and the check leaves the run's random stream untouched. ``torch.compile`` is replaced by stand-ins that copy the
loss exactly, with rounding, or wrongly, so these tests need no C++ compiler; the real compiled path is exercised
by the slow compiled-training test in test_training.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rhovae import compiled as compiled_module
from rhovae.compiled import CompiledKernelError, checked_compile
from rhovae.trainer import training_loss

from helpers.models import P, tiny_vae


def stand_in(change):
    """A ``torch.compile`` whose "compiled" loss is the eager loss with ``change`` applied to its terms."""
    def fake_compile(loss, options=None):
        assert options == {"fallback_random": True}  # inductor must draw what eager draws

        def run(*args, **kwargs):
            value, terms = loss(*args, **kwargs)
            return value, dataclasses.replace(terms, **change(terms))
        return run
    return fake_compile


def batch(n=20, seed=0):
    return torch.bernoulli(torch.rand(n, P, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("change, message", [
    (lambda t: {"kl": t.kl.clone().index_fill_(0, torch.tensor([3, 5]), float("nan"))},
     r"\(kl per image: 2 of 20 values non-finite \(eager: finite\)\)"),
    (lambda t: {"kl": t.kl + torch.arange(20) * 0.5}, r"\(kl per image: 1[0-9] of 20 values off by up to 9\.5\)"),
    (lambda t: {"recon": t.recon - 3.0}, r"\(recon per image: 20 of 20 values off by up to 3\b"),
], ids=["NaN KL", "KL off by nats", "reconstruction 3 nats off"])
def test_a_compiled_loss_that_disagrees_with_eager_stops_the_run_in_one_line(monkeypatch, change, message):
    monkeypatch.setattr(compiled_module.torch, "compile", stand_in(change))
    loss = training_loss(tiny_vae("planar"), compile=True)
    with pytest.raises(CompiledKernelError, match=r"^torch.compile's training loss disagrees with eager PyTorch on the "
                       r"same batch " + message + r".*trainer\.compile=false$") as err:
        loss(batch())
    assert "\n" not in str(err.value)


def test_rounding_passes_and_the_check_keeps_the_random_stream(monkeypatch):
    """Float32 rounding (relative 1e-5) is no disagreement. The eager pass runs on forked random state, so the
    checked loss returns what the unchecked one returns and leaves the generator where it leaves it; a batch of a
    shape already checked is not run eagerly again."""
    eager_calls = []
    model = tiny_vae("planar")
    monkeypatch.setattr(compiled_module.torch, "compile",
                        stand_in(lambda t: {"recon": t.recon * (1 + 1e-5), "kl": t.kl * (1 - 1e-5)}))
    original = model.loss
    checked = checked_compile(lambda *a, **k: (eager_calls.append(1), original(*a, **k))[1])
    x = batch()
    torch.manual_seed(7)
    value, terms = checked(x)
    after_checked = torch.get_rng_state()
    torch.manual_seed(7)
    expected_value, expected_terms = model.loss(x)
    assert torch.equal(torch.get_rng_state(), after_checked)
    torch.testing.assert_close(value, expected_value, rtol=1e-4, atol=0)
    torch.testing.assert_close(terms.kl, expected_terms.kl, rtol=1e-4, atol=0)
    assert len(eager_calls) == 2  # the check's eager pass, then the stand-in's own call of the loss
    checked(batch(seed=1))
    assert len(eager_calls) == 3  # same shape: only the "compiled" call
    checked(batch(n=7))
    assert len(eager_calls) == 5  # a new shape is checked again


def test_an_eager_run_is_not_checked(monkeypatch):
    monkeypatch.setattr(compiled_module.torch, "compile", lambda *a, **k: pytest.fail("compile=false compiled"))
    model = tiny_vae("diag")
    assert training_loss(model, compile=False) == model.loss
