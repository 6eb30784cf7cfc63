"""Training runs in-process on tiny data: reproducibility, warm-up, early stopping, the non-finite guard."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
import torch

from helpers import POSTERIOR_CHOICES, POSTERIOR_NAMES, TINY_OVERRIDES, compose
from rhovae.checkpoint import load_checkpoint
from rhovae.evaluation import evaluate_elbo, posterior_diagnostics
from rhovae.provenance import KERNEL_VARIABLES, cpu_generation, cpu_model, provenance
from rhovae.config import load_config, validate_config
from rhovae.errors import ConfigError
from rhovae.build import build_vae, load_data
from rhovae.experiment import run_experiment
from rhovae.milestones import keep_saved_milestones, milestone_checkpoint, milestone_epoch
from rhovae.posteriors import DiagonalPosterior
from rhovae.tracking import append_jsonl, read_jsonl
from rhovae.trainer import NonFiniteLossError, training_loss
from rhovae.vae import VAE


def tiny_cfg(data_root, *extra):
    return compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES, *extra])


def test_same_seed_same_numbers_different_seed_different(data_root, tmp_path):
    a = run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "seed=1"), tmp_path / "a")
    b = run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "seed=1"), tmp_path / "b")
    c = run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "seed=2"), tmp_path / "c")
    for key in ("val/elbo", "test/elbo", "test/recon", "test/kl", "n_params"):
        assert a[key] == b[key], key
    assert a["test/elbo"] != c["test/elbo"]
    assert read_jsonl(tmp_path / "a" / "metrics.jsonl")[1]["train/elbo"] == read_jsonl(
        tmp_path / "b" / "metrics.jsonl")[1]["train/elbo"]


def test_training_improves_the_elbo(data_root, tmp_path):
    summary = run_experiment(tiny_cfg(data_root, "trainer.epochs=4", "trainer.max_batches=null",
                                      "trainer.lr=3e-3"), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[-1]["val/elbo"] > rows[0]["val/elbo"] + 20
    assert summary["test/elbo"] > -550  # 784 Bernoulli pixels at p = 0.5 cost 543 nats


def test_kl_warmup_reports_beta_and_beta_one_elbo(data_root, tmp_path):
    run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "trainer.kl_warmup_epochs=2"), tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert 0 < rows[0]["beta"] < rows[1]["beta"] <= 1
    for row in rows:  # the reported ELBO is the beta = 1 bound; the loss uses beta
        assert row["train/elbo"] == pytest.approx(row["train/recon"] - row["train/kl"], abs=1e-3)
        assert -row["train/loss"] > row["train/elbo"]


def test_early_stopping_when_validation_stops_improving(data_root, tmp_path):
    # lr so small that Adam's steps vanish below float32 resolution: val ELBO never improves after epoch 1
    summary = run_experiment(tiny_cfg(data_root, "trainer.epochs=6", "trainer.patience=2", "trainer.lr=1e-30"),
                             tmp_path)
    assert summary["epochs"] == 3 and summary["best_epoch"] == 1
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3


@pytest.mark.parametrize("iw_samples, best", [(1, 2), (3, 3)])
def test_the_best_checkpoint_is_the_one_the_trained_bound_prefers(data_root, tmp_path, monkeypatch, iw_samples, best):
    """Validation scores scripted so that the ELBO peaks at epoch 2 and the IWAE bound at epoch 3: an ELBO run keeps
    epoch 2 as best.pt, an IWAE run (objective.iw_samples = 3) epoch 3; the summary reports that epoch's numbers."""
    import rhovae.trainer as trainer_module

    real = trainer_module.evaluate_elbo
    scripted = iter([(-100.0, -98.0), (-99.0, -97.5), (-101.0, -96.0)])

    def evaluate(model, images, **options):
        measured = real(model, images, **options)
        assert ("iw_bound" in measured) == (options["iw_samples"] > 1)  # computed only for an IWAE run
        elbo, bound = next(scripted)
        return {**measured, "elbo": elbo, **({"iw_bound": bound} if "iw_bound" in measured else {})}

    monkeypatch.setattr(trainer_module, "evaluate_elbo", evaluate)
    summary = run_experiment(tiny_cfg(data_root, "trainer.epochs=3", f"objective.iw_samples={iw_samples}"), tmp_path)
    assert summary["best_epoch"] == best
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["state"]["epoch"] == best
    assert summary["val/elbo"] == [-100.0, -99.0, -101.0][best - 1]
    assert ("val/iw_bound" in summary) == (iw_samples > 1)


def test_validation_scores_the_iwae_bound_only_for_an_iwae_run():
    """``iw_bound`` appears only with iw_samples > 1, leaves the ELBO's draws alone, and rises with k above the ELBO
    (an untrained model: its log-weights spread widely, so the seeded estimates order as the bounds do)."""
    torch.manual_seed(0)
    model = build_vae(load_config(compose(["latent_dim=3", "networks.hidden=[8]", "logger=none"])), (1, 28, 28))
    images = torch.randint(0, 256, (10, 784), dtype=torch.uint8)
    plain = evaluate_elbo(model, images, batch_size=10, eval_seed=4)
    two, many = (evaluate_elbo(model, images, batch_size=10, eval_seed=4, iw_samples=k) for k in (2, 200))
    assert "iw_bound" not in plain and two["elbo"] == many["elbo"] == plain["elbo"]
    assert plain["elbo"] < two["iw_bound"] < many["iw_bound"]


def test_a_checkpoint_from_before_iwae_selection_restores_its_best_bound():
    from rhovae.trainer import TrainState

    state = TrainState.from_saved({"epoch": 3, "best_epoch": 2, "best_val_elbo": -90.5})
    assert (state.epoch, state.best_epoch, state.best_val_bound) == (3, 2, -90.5)


def test_non_finite_loss_in_epoch_two_names_it_and_keeps_epoch_one(data_root, tmp_path, monkeypatch):
    original = VAE.elbo_terms
    training_calls = {"n": 0}

    def poisoned(self, x, **options):
        terms = original(self, x, **options)
        if self.training:
            training_calls["n"] += 1
            if training_calls["n"] == 5:  # 3 batches per epoch: epoch 2, step 5
                terms.recon = terms.recon * float("nan")
        return terms

    monkeypatch.setattr(VAE, "elbo_terms", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 5: the reconstruction term went NaN"):
        run_experiment(tiny_cfg(data_root, "trainer.epochs=3"), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["state"]["epoch"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_non_finite_loss_stops_and_marks_the_run_failed(data_root, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch \d+, step \d+: the .* term went"):
        run_experiment(tiny_cfg(data_root, "trainer.epochs=3", "trainer.lr=1e30"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["error"]
    assert "test/elbo" not in summary


def test_training_optimizer_is_fused_adam_with_the_reference_updates():
    from rhovae.trainer import make_optimizer

    def trained(make):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))
        optimizer = make(model)
        for step in range(5):
            optimizer.zero_grad()
            model(torch.randn(16, 5, generator=torch.Generator().manual_seed(step))).pow(2).mean().backward()
            optimizer.step()
        return optimizer, [p.detach().clone() for p in model.parameters()]

    fused, fused_params = trained(lambda m: make_optimizer(m, lr=1e-2))
    _, reference_params = trained(lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, foreach=False))
    assert fused.param_groups[0]["fused"] is True and fused.param_groups[0]["lr"] == 1e-2
    for p, q in zip(fused_params, reference_params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adam_with_the_iwae_codes_betas_and_second_moment_start_matches_its_update_rule():
    """The IWAE paper's released Adam (yburda/iwae optimizers.py), written out in numpy: beta1 0.99, v starts at 1,
    step lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m / (sqrt(v) + eps). eps is tiny here, where its placement (before
    or after the bias correction) cannot matter."""
    from rhovae.trainer import make_optimizer
    lr, b1, b2, eps = 1e-2, 0.99, 0.999, 1e-10
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(16, 5, generator=gen) for _ in range(6)]

    def loss(weight, x):
        return torch.tanh(x @ weight).pow(2).mean()

    def trained(second_moment_init):
        weight = torch.nn.Parameter(torch.linspace(-1, 1, 15).reshape(5, 3))
        optimizer = make_optimizer(torch.nn.ParameterList([weight]), lr=lr, eps=eps, betas=(b1, b2),
                                   second_moment_init=second_moment_init)
        for x in inputs:
            optimizer.zero_grad()
            loss(weight, x).backward()
            optimizer.step()
        return weight.detach().double().numpy()

    w = torch.linspace(-1, 1, 15, dtype=torch.float64).reshape(5, 3).numpy()
    m, v = np.zeros_like(w), np.ones_like(w)
    for t, x in enumerate(inputs, start=1):
        wt = torch.tensor(w, requires_grad=True)
        loss(wt, x.double()).backward()
        g = wt.grad.numpy()
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (np.sqrt(v) + eps)
    np.testing.assert_allclose(trained(1.0), w, rtol=1e-5, atol=1e-7)
    assert np.abs(trained(0.0) - w).max() > 1e-3  # torch's own start (v = 0) takes much larger first steps


def test_the_run_builds_adam_from_the_trainer_section():
    from rhovae.trainer import configured_optimizer
    cfg = load_config(compose(["trainer.adam_betas=[0.99,0.999]", "trainer.adam_second_moment_init=1",
                               "trainer.adam_eps=1e-4"]))
    model = torch.nn.Linear(3, 2)
    optimizer = configured_optimizer(model, cfg.trainer)
    assert optimizer.param_groups[0]["betas"] == (0.99, 0.999) and optimizer.param_groups[0]["eps"] == 1e-4
    assert all(torch.equal(optimizer.state[p]["exp_avg_sq"], torch.ones_like(p)) for p in model.parameters())
    assert not configured_optimizer(model, load_config(compose([])).trainer).state  # torch's default: state made at the first step


@pytest.mark.parametrize("override, accepted", [
    ("trainer.adam_betas=[0.9,1.0]", r"two numbers in \[0, 1\): \[beta1, beta2\]"),
    ("trainer.adam_betas=[0.9]", r"two numbers in \[0, 1\): \[beta1, beta2\]"),
    ("trainer.adam_second_moment_init=-1", "a number >= 0"),
])
def test_bad_adam_settings_are_refused_in_one_line(override, accepted):
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=.* is not valid; accepted: {accepted}$"):
        validate_config(load_config(compose([override])))


def _without_timings(rows):
    return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in rows]


def test_milestones_score_the_model_of_that_epoch_without_changing_training(data_root, tmp_path):
    # a threshold low enough that a three-epoch model has some active units and some not
    common = ["trainer.epochs=3", "eval.active_threshold=1e-3"]
    plain = run_experiment(tiny_cfg(data_root, *common), tmp_path / "plain")
    marked = run_experiment(tiny_cfg(data_root, *common, "trainer.milestones=[1,3]", "eval.milestone_images=30",
                                     "eval.milestone_iw_samples=25"), tmp_path / "marked")
    assert _without_timings(read_jsonl(tmp_path / "plain" / "metrics.jsonl")) == _without_timings(
        read_jsonl(tmp_path / "marked" / "metrics.jsonl"))
    assert {k: v for k, v in plain.items() if k.startswith("test/") and not k.endswith("_s")} == {
        k: v for k, v in marked.items() if k.startswith("test/") and not k.endswith("_s")}

    rows = read_jsonl(tmp_path / "marked" / "milestones.jsonl")
    assert [(row["epoch"], row["n_images"], row["test/iw_samples"]) for row in rows] == [(1, 30, 25), (3, 30, 25)]
    ckpt = load_checkpoint(tmp_path / "marked" / "checkpoints" / "epoch_1.pt")
    assert ckpt["state"]["epoch"] == 1
    config = load_config(ckpt["config"])
    data = load_data(config, torch.device("cpu"))
    model = build_vae(config, data.image_shape)
    model.load_state_dict(ckpt["model"])
    again = evaluate_elbo(model, data.test[:30], batch_size=config.eval.batch_size, eval_seed=0)
    assert rows[0]["test/elbo"] == pytest.approx(again["elbo"], abs=1e-9)  # the epoch-1 model, not the last one
    diagnostics, _ = posterior_diagnostics(model, data.test[:30], batch_size=config.eval.batch_size, eval_seed=0,
                                           mean_samples=config.eval.mean_samples,
                                           threshold=config.eval.active_threshold)
    assert 0 < rows[0]["test/active_units"] == diagnostics["active_units"] < 4  # of the 4 latents
    assert rows[0]["test/elbo"] != rows[1]["test/elbo"]
    assert rows[1]["test/nll"] <= -rows[1]["test/elbo"] + 5


def test_a_milestone_checkpoints_name_gives_back_its_epoch_and_no_other_name_does(tmp_path):
    assert milestone_epoch(milestone_checkpoint(tmp_path, 364).stem) == 364
    assert [milestone_epoch(name) for name in ("best", "last", "epoch_", "epoch_x", "last_364")] == [None] * 5


def test_a_resumed_run_keeps_the_milestones_of_the_epochs_its_checkpoint_holds(tmp_path):
    for epoch in (10, 20, 50):
        append_jsonl(tmp_path / "milestones.jsonl", {"epoch": epoch, "test/nll": 100.0 - epoch})
    keep_saved_milestones(tmp_path, 49)  # epoch 50 was scored, but the run was killed before last.pt moved past it
    assert [row["epoch"] for row in read_jsonl(tmp_path / "milestones.jsonl")] == [10, 20]


def test_a_crash_in_the_first_step_leaves_a_failed_summary_with_the_error_and_its_traceback(
        data_root, tmp_path, monkeypatch, caplog):
    def broken_kl(self, *args, **kwargs):
        raise RuntimeError("a KL that raises")

    monkeypatch.setattr(DiagonalPosterior, "kl", broken_kl)
    with pytest.raises(RuntimeError, match="a KL that raises"):
        run_experiment(tiny_cfg(data_root, "trainer.epochs=2"), tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"] == "RuntimeError: a KL that raises"
    assert summary["epochs"] == 0 and summary["config"]["posterior"]["name"] == "diag"
    failure = [r for r in caplog.records if r.levelname == "ERROR"]
    assert failure and "the run failed at epoch 1" in failure[0].getMessage() and failure[0].exc_info


def test_every_run_records_what_it_ran_on(data_root, tmp_path):
    summary = run_experiment(tiny_cfg(data_root, "trainer.epochs=1", "trainer.threads=1"), tmp_path)
    record = summary["provenance"]
    assert record["torch"] == torch.__version__.split("+")[0] or record["torch"] == torch.__version__
    assert record["threads"] == 1 and record["device"] == "cpu" and record["python"]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    assert record["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["provenance"] == record


def test_a_run_records_the_environment_variables_that_chose_its_kernels(monkeypatch):
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert provenance(torch.device("cpu"))["kernel_settings"] is None
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sets the threads, recorded as such, not a kernel choice
    assert provenance(torch.device("cpu"))["kernel_settings"] == "ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2"


def test_the_processor_generation_tells_apart_cpus_that_share_a_model_name():
    def cpuinfo(processor: int, model: int) -> str:
        return (f"processor\t: {processor}\ncpu family\t: 25\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n"
                f"stepping\t: 1\n\n")
    zen3, zen4_two_cores = cpuinfo(0, 1), cpuinfo(0, 17) + cpuinfo(1, 17)
    assert cpu_model(zen3) == cpu_model(zen4_two_cores) == "AMD EPYC"
    assert (cpu_generation(zen3), cpu_generation(zen4_two_cores)) == ("25/1/1", "25/17/1")
    assert cpu_generation("processor\t: 0\nmodel name\t: Apple M2\n") is None


def test_compile_without_a_cpp_compiler_is_refused_in_one_line(data_root, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match=r"^trainer.compile=true needs a C\+\+ compiler .*trainer.compile=false$"):
        run_experiment(tiny_cfg(data_root, "trainer.compile=true"), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_compiled_training_draws_what_eager_draws_and_resumes_bit_for_bit(data_root, tmp_path):
    """inductor's fallback_random keeps eager's random stream: the first epoch's training ELBO, a mean over the
    draws of 96 images, agrees to rounding (other draws would move it by tenths of a nat); a compiled run stopped
    after epoch 1 and resumed ends where the uninterrupted compiled run ends."""
    eager = run_experiment(tiny_cfg(data_root, "trainer.epochs=2"), tmp_path / "eager")
    compiled = run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "trainer.compile=true"), tmp_path / "compiled")
    first = [read_jsonl(tmp_path / name / "metrics.jsonl")[0]["train/elbo"] for name in ("eager", "compiled")]
    assert first[0] == pytest.approx(first[1], abs=1e-2)
    assert compiled["val/elbo"] == pytest.approx(eager["val/elbo"], abs=5e-2)
    run_experiment(tiny_cfg(data_root, "trainer.epochs=1", "trainer.compile=true"), tmp_path / "resumed")
    resumed = run_experiment(tiny_cfg(data_root, "trainer.epochs=2", "trainer.compile=true", "trainer.resume=true"),
                             tmp_path / "resumed")
    for key in ("val/elbo", "test/elbo", "test/nll"):
        assert resumed[key] == compiled[key], key


@pytest.mark.slow
@pytest.mark.parametrize("name", POSTERIOR_NAMES)
def test_every_posterior_trains_compiled_with_eagers_numbers(name):
    """torch.compile traces every posterior's loss (a KL torch.compile could not trace once broke fullcov), and with
    eager's random draws the compiled loss and gradients are eager's up to rounding."""
    config = load_config({"latent_dim": 4, "networks": {"name": "mlp", "hidden": [16]}, "posterior": {"name": name},
                          "dataset": {"name": "mnist"}, "logger": {"name": "none"}})
    x = torch.bernoulli(torch.full((8, 784), 0.3), generator=torch.Generator().manual_seed(0))
    results = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_vae(config, (1, 28, 28))
        torch.manual_seed(1)
        loss, _ = training_loss(model, compile)(x, 1.0, 0.0, 1)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-3)
    assert len(compiled_grads) == len(eager_grads)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", POSTERIOR_CHOICES)
def test_every_posterior_loss_compiles_to_one_graph(name):
    """A graph break splits the compiled step and costs its speed (diag's KL dispatch and pyro's conditioned IAF step
    each split it once, the Sylvester orthogonalization's data-dependent loop six times): every posterior's loss
    traces as one graph."""
    import torch._dynamo as dynamo

    config = load_config(compose([f"posterior={name}", "latent_dim=4", "networks.hidden=[16]", "logger=none"]))
    torch.manual_seed(0)
    model = build_vae(config, (1, 28, 28))
    dynamo.reset()
    explanation = dynamo.explain(model.loss)(torch.bernoulli(torch.full((8, 784), 0.3)))
    dynamo.reset()
    assert explanation.graph_count == 1, explanation.break_reasons


def test_an_unknown_training_precision_names_the_accepted_ones(data_root, tmp_path):
    cfg = compose([f"dataset.root={data_root}", "logger=none", *TINY_OVERRIDES, "trainer.precision=float16"])
    with pytest.raises(ConfigError, match=r"^trainer.precision='float16' is not valid; accepted: float32, bfloat16$"):
        run_experiment(cfg, tmp_path)


def test_training_steps_in_the_configured_precision_and_evaluates_in_float32(data_root, tmp_path, monkeypatch):
    """Every training step gets trainer.precision; validation and the test ELBO (``elbo_terms`` without it) do not."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # accepted on any CPU for this test
    steps, evaluations = [], []
    original_loss, original_terms = VAE.loss, VAE.elbo_terms

    def loss(self, *args, **kwargs):
        steps.append(args[4] if len(args) > 4 else kwargs.get("network_dtype"))
        return original_loss(self, *args, **kwargs)

    def elbo_terms(self, x, kl_groups=False, network_dtype=torch.float32):
        if not torch.is_grad_enabled():
            evaluations.append(network_dtype)
        return original_terms(self, x, kl_groups, network_dtype)
    monkeypatch.setattr(VAE, "loss", loss)
    monkeypatch.setattr(VAE, "elbo_terms", elbo_terms)
    summary = run_experiment(compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu",
                                      *TINY_OVERRIDES, "trainer.epochs=2", "trainer.precision=bfloat16"]), tmp_path)
    assert steps and set(steps) == {torch.bfloat16}
    assert evaluations and set(evaluations) == {torch.float32}
    assert math.isfinite(summary["test/elbo"])
