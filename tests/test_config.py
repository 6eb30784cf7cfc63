"""Every config combination composes and validates; bad values fail with one line naming key and options."""

from __future__ import annotations

import itertools

import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from helpers import DATASET_NAMES, NETWORK_NAMES, POSTERIOR_NAMES, TINY_OVERRIDES, compose, config_options
from rhovae.config import validate_config
from rhovae.errors import ConfigError
from rhovae.config import load_config
from rhovae.build import build_vae
from rhovae.experiment import plan_run, run_experiment
from rhovae.networks import NETWORKS
from rhovae.posteriors import POSTERIORS, posterior_label

GROUPS = {group: config_options(group) for group in ("dataset", "posterior", "networks", "logger")}


def test_config_groups_offer_every_registered_component():
    assert GROUPS["dataset"] == DATASET_NAMES
    assert GROUPS["networks"] == NETWORK_NAMES
    assert GROUPS["logger"] == ["none", "wandb"]
    assert set(GROUPS["posterior"]) == {*POSTERIOR_NAMES, *POSTERIORS.settings}  # and named settings (a rho variant)


@pytest.mark.parametrize("option", GROUPS["posterior"])
def test_the_method_label_of_every_option_is_its_name(option):
    """The group choice is the label, so W&B groups and tables read `diag`, `rho`, `rho_published_code`; options
    changed on top of it follow in brackets."""
    options = OmegaConf.to_container(compose([f"posterior={option}"]).posterior)
    assert posterior_label(options) == option
    assert posterior_label({**options, "min_std": 0.01}) == f"{option}[min_std=0.01]"


def test_a_named_setting_is_the_label_however_its_options_were_chosen():
    chosen = OmegaConf.to_container(compose(["posterior=rho", "posterior.variant=published_code"]).posterior)
    assert chosen == OmegaConf.to_container(compose(["posterior=rho_published_code"]).posterior)
    assert posterior_label(chosen) == "rho_published_code"
    assert posterior_label({**chosen, "variant": "paper"}) == "rho"
    with pytest.raises(ValueError, match="no option"):
        POSTERIORS.add_setting("rho_typo", "rho", varaint="published_code")


@pytest.mark.parametrize("combo", list(itertools.product(*GROUPS.values())), ids="-".join)
def test_every_combination_composes_validates_and_builds(combo):
    overrides = [f"{group}={option}" for group, option in zip(GROUPS, combo)]
    cfg = compose(overrides)
    assert validate_config(load_config(cfg)) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for group, option in zip(GROUPS, combo):
        settings = POSTERIORS.settings if group == "posterior" else {}
        assert cfg[group].name == settings.get(option, (option,))[0]  # a named setting composes its component
    model = build_vae(load_config(cfg), (1, 28, 28))
    assert model.elbo_terms(torch.zeros(2, 784)).elbo.shape == (2,)


def test_defaults_are_mnist_diag_mlp_wandb_offline():
    cfg = compose([])
    assert (cfg.dataset.name, cfg.posterior.name, cfg.networks.name, cfg.logger.name) == ("mnist", "diag", "mlp", "wandb")
    assert cfg.logger.mode == "offline" and cfg.dataset.binarize == "dynamic" and cfg.dataset.root == "./data"


def test_environment_variables_set_data_root_and_wandb_mode(monkeypatch):
    monkeypatch.setenv("RHOVAE_DATA", "/somewhere/data")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = compose([])
    assert cfg.dataset.root == "/somewhere/data" and cfg.logger.mode == "disabled"


def test_documented_overrides_apply():
    cfg = compose(["dataset=fmnist", "posterior=rho", "networks=conv", "dataset.root=/x", "dataset.binarize=static",
                   "latent_dim=8", "seed=3", "trainer.epochs=2", "trainer.batch_size=64", "trainer.lr=3e-4",
                   "trainer.max_batches=5", "trainer.device=cpu", "trainer.kl_warmup_epochs=2",
                   "trainer.patience=4", "logger=wandb", "logger.mode=disabled"])
    validate_config(load_config(cfg))
    assert (cfg.latent_dim, cfg.seed, cfg.trainer.epochs, cfg.trainer.batch_size) == (8, 3, 2, 64)
    assert (cfg.trainer.lr, cfg.trainer.max_batches, cfg.trainer.kl_warmup_epochs, cfg.trainer.patience) == (3e-4, 5, 2, 4)


def test_posterior_knobs_can_be_overridden():
    cfg = compose(["posterior=iaf", "posterior.flow_length=8", "posterior.hidden=[16,16]", "latent_dim=6"])
    validate_config(load_config(cfg))
    model = build_vae(load_config(cfg), (1, 28, 28))
    assert len(model.posterior.steps) == 8
    assert model.posterior(torch.zeros(1, model.encoder.out_features)).rsample().shape == (1, 6)
    cfg = compose(["posterior=planar", "posterior.flow_length=3"])
    assert build_vae(load_config(cfg), (1, 28, 28)).posterior.flow_length == 3


BAD = [
    ("latent_dim=0", "latent_dim=0"),
    ("latent_dim=-3", "latent_dim=-3"),
    ("trainer.epochs=0", "trainer.epochs=0"),
    ("trainer.batch_size=0", "trainer.batch_size=0"),
    ("trainer.lr=0", "trainer.lr=0"),
    ("trainer.lr=-1e-3", "trainer.lr=-0.001"),
    ("trainer.max_batches=0", "trainer.max_batches=0"),
    ("trainer.threads=0", "trainer.threads=0.*integer >= 1 or null"),
    ("trainer.patience=0", "trainer.patience=0"),
    ("trainer.stop_at_epoch=0", "trainer.stop_at_epoch=0"),
    ("trainer.kl_warmup_epochs=-1", "trainer.kl_warmup_epochs=-1"),
    ("trainer.device=tpu", "trainer.device='tpu'.*auto, cpu, cuda"),
    ("dataset.binarize=half", "dataset.binarize='half'.*dynamic, static, none"),
    ("dataset.name=cifar", "dataset.name='cifar'.*mnist, fmnist"),
    ("posterior.name=vamp", "posterior.name='vamp'.*diag"),
    ("networks.name=resnet", "networks.name='resnet'.*mlp"),
    ("logger.mode=sometimes", "logger.mode='sometimes'.*offline, online, disabled"),
    ("posterior=planar posterior.flow_length=-1", "posterior.flow_length=-1.*integer >= 0"),
    ("posterior=iaf posterior.flow_length=-2", "posterior.flow_length=-2.*integer >= 0"),
    ("posterior=iaf posterior.kl_samples=0", "posterior.kl_samples=0.*integer >= 1"),
    ("posterior.min_std=0", "posterior.min_std=0.*number > 0"),
]


@pytest.mark.parametrize("override,message", BAD, ids=[b[0] for b in BAD])
def test_bad_values_fail_with_key_value_and_accepted(override, message):
    cfg = compose(override.split())
    with pytest.raises(ConfigError, match=message) as err:
        validate_config(load_config(cfg))
    assert "accepted" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("override,key", [
    ("trainer.epochs=many", "trainer.epochs"), ("trainer.progress=maybe", "trainer.progress"),
    ("eval.iw_samples=1.5", "eval.iw_samples"), ("posterior=iaf posterior.flow_length=2.5", "posterior.flow_length"),
    ("networks.hidden=[a,b]", "networks.hidden[0]"),
    ("posterior=diag posterior.flow_length=4", "posterior.flow_length"),
])
def test_the_typed_configs_refuse_wrong_types_and_keys_at_composition(override, key):
    with pytest.raises(ConfigCompositionException) as err:
        compose(override.split())
    assert f"full_key: {key}" in str(err.value.__cause__)


def test_every_registered_component_is_a_typed_option_with_its_constructor_defaults():
    for group, registry in (("posterior", POSTERIORS), ("networks", NETWORKS)):
        for name in registry:
            options = OmegaConf.to_container(compose([f"{group}={name}"])[group])
            assert options == {"name": name, **{k: list(v) if isinstance(v, tuple) else v
                                                for k, v in registry.defaults(name).items()}}


# Wrong options of a component are found when it is built, which ``plan_run`` does once, before the run writes.
BUILD_ERRORS = [
    ("networks.activation=swish", "networks.activation='swish' is not known; accepted: elu, gelu, relu"),
    ("+posterior.flows=3", "posterior='diag' has no option flows; accepted: min_std"),
    ("posterior=rho posterior.variant=typo", "posterior.variant='typo'.*paper, published_code"),
]


NETWORK_ERRORS = [
    ("mlp", {"hidden": [64, 0]}, r"networks.hidden=\[64, 0\] is not valid; accepted: a non-empty list of integers"),
    ("mlp", {"hidden": []}, r"networks.hidden=\[\] is not valid"),
    ("conv", {"channels": [8, 8, 8]}, r"networks.channels=\[8, 8, 8\].*multiple of 2\*\*n \(images here: 28x28"),
    ("conv", {"hidden": 0}, "networks.hidden=0 is not valid; accepted: an integer >= 1"),
]


@pytest.mark.parametrize("name,options,message", NETWORK_ERRORS, ids=[str(e[:2]) for e in NETWORK_ERRORS])
def test_network_pairs_check_their_own_options_with_one_line(name, options, message):
    from rhovae.networks import build_networks

    with pytest.raises(ConfigError, match=message) as err:
        build_networks(name, (1, 28, 28), 4, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("override,message", BUILD_ERRORS, ids=[b[0] for b in BUILD_ERRORS])
def test_bad_component_options_are_refused_before_the_run_folder_exists(override, message, data_root, tmp_path):
    cfg = compose([*override.split(), f"dataset.root={data_root}", "logger=none", "trainer.device=cpu",
                   *TINY_OVERRIDES])
    with pytest.raises(ConfigError, match=message) as err:
        plan_run(cfg, tmp_path / "run")
    assert "accepted" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_run_builds_its_model_once_for_the_shape_of_its_data(data_root, tmp_path, monkeypatch):
    built = []
    build = NETWORKS.build
    monkeypatch.setattr(NETWORKS, "build", lambda name, shape, *a, **kw: built.append(tuple(shape)) or build(
        name, shape, *a, **kw))
    cfg = compose([f"dataset.root={data_root}", "logger=none", "trainer.device=cpu", *TINY_OVERRIDES])
    plan = plan_run(cfg, tmp_path / "planned")
    assert built == [plan.data.image_shape] and plan.model.latent_dim == cfg.latent_dim
    assert not (tmp_path / "planned").exists()  # planning writes nothing
    built.clear()
    run_experiment(cfg, tmp_path / "run")
    assert built == [plan.data.image_shape] and (tmp_path / "run" / "summary.json").is_file()


def test_published_code_variant_composes_and_builds():
    cfg = compose(["posterior=rho", "posterior.variant=published_code"])
    validate_config(load_config(cfg))
    model = build_vae(load_config(cfg), (1, 28, 28))
    assert type(model.posterior).__name__ == "PublishedCodeRhoPosterior"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_refused():
    with pytest.raises(ConfigError, match="trainer.device='cuda' but no CUDA GPU"):
        validate_config(load_config(compose(["trainer.device=cuda"])))


def test_keys_marked_for_resume_and_tables_are_keys_of_the_composed_config():
    """The flags of rhovae/config/schema.py name real keys, and only the ones meant (a sample of each side)."""
    from rhovae.config import RESUMABLE_KEYS, flatten, in_sections
    from rhovae.results import NOT_A_FACTOR

    flat = flatten(OmegaConf.to_container(compose([]), resolve=False))
    for key in (*RESUMABLE_KEYS, *NOT_A_FACTOR):
        assert any(in_sections(k, [key]) for k in flat), key
    assert {"trainer.epochs", "trainer.device", "dataset.root", "logger.project", "gaps.steps"} == {
        k for k in ("trainer.epochs", "trainer.device", "dataset.root", "logger.project", "gaps.steps", "trainer.lr",
                    "eval.batch_size", "latent_dim", "posterior.min_std") if in_sections(k, RESUMABLE_KEYS)}
    assert {"seed", "trainer.threads", "eval.iw_chunk", "eval.batch_size", "gaps.iw_samples"} == {
        k for k in ("seed", "trainer.threads", "eval.iw_chunk", "eval.batch_size", "gaps.iw_samples", "eval.iw_samples",
                    "trainer.epochs", "objective.beta", "networks.hidden") if in_sections(k, NOT_A_FACTOR)}


def test_the_old_decoder_name_is_read_as_networks_on_the_command_line_and_in_saved_configs(capsys):
    from rhovae.config.hydra_run import accept_renamed
    from rhovae.config import upgrade

    argv = ["-m", "decoder=mlp,conv", "+decoder.dropout=0.1", "~decoder.activation", "posterior=rho",
            "decoder_like=1", "hydra.run.dir=decoder", "--cfg", "job"]
    assert accept_renamed(argv) == ["-m", "networks=mlp,conv", "+networks.dropout=0.1", "~networks.activation",
                                    "posterior=rho", "decoder_like=1", "hydra.run.dir=decoder", "--cfg", "job"]
    assert capsys.readouterr().err.count("the decoder group is now called networks") == 3
    old = {"seed": 1, "decoder": {"name": "conv"}, "posterior": {"name": "rho"}}
    assert upgrade(old) == {"seed": 1, "networks": {"name": "conv"}, "posterior": {"name": "rho"}}
    assert "decoder" in old and upgrade(upgrade(old)) == upgrade(old)


def test_configs_readme_documents_every_key_and_every_option_of_every_posterior():
    """configs/README.md is written by hand: this fails when a key or an option is added without a line there."""
    from helpers import CONFIGS
    from rhovae.config import flatten
    from rhovae.config import section_defaults

    text = (CONFIGS / "README.md").read_text()
    missing = [k for k in flatten(section_defaults()) if f"`{k}`" not in text]
    rows = {line.split("|")[1].strip().strip("`"): line for line in text.splitlines() if line.startswith("| `")}
    for name in [*POSTERIORS, *POSTERIORS.settings]:
        component = POSTERIORS.settings.get(name, (name,))[0]
        if name not in rows:
            missing.append(f"posterior={name}")
        elif name == component:  # a named setting's row says "as <component>"
            missing += [f"posterior.{o} ({name})" for o in POSTERIORS.defaults(name) if f"`{o}`" not in rows[name]]
    assert not missing, missing


def test_configs_readme_defaults_are_the_schemas():
    """The default column of configs/README.md's key table is written by hand: it must say what schema.py says."""
    import yaml

    from helpers import CONFIGS
    from rhovae.config import flatten
    from rhovae.config import section_defaults

    defaults = flatten(section_defaults())
    documented, wrong = 0, []
    for line in (CONFIGS / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if not line.startswith("| `") or len(cells) < 3 or cells[0].strip("`") not in defaults:
            continue
        key, written = cells[0].strip("`"), yaml.safe_load(cells[1].strip("`"))
        expected = defaults[key]
        numeric = isinstance(expected, (int, float)) and not isinstance(expected, bool)
        same = float(written) == float(expected) if numeric and isinstance(written, (int, float, str)) \
            else written == expected
        documented += 1
        if not same:
            wrong.append((key, cells[1], expected))
    assert documented >= 40 and not wrong, wrong


def test_configs_readme_lists_of_flagged_keys_are_the_schemas_flags():
    """configs/README.md's lists of resumable keys and of keys that are not factors are the flags of schema.py."""
    import re

    from helpers import CONFIGS
    from rhovae.config import NOT_FACTORS, RESUMABLE_KEYS

    bullets = re.split(r"\n(?=- )|\n\n", (CONFIGS / "README.md").read_text())
    for start, flagged in (("- resumable,", RESUMABLE_KEYS), ("- not a factor,", NOT_FACTORS)):
        [bullet] = [b for b in bullets if b.startswith(start)]
        listed = re.findall(r"`([\w.]+)`", bullet.split("them:", 1)[1])
        assert sorted(listed) == sorted(flagged), (start, sorted(set(listed) ^ set(flagged)))


@pytest.mark.slow
def test_the_config_package_imports_neither_torch_nor_model_code():
    """In a fresh interpreter: importing rhovae.config and reading its flags and defaults loads no torch."""
    import subprocess
    import sys

    from helpers import REPO, subprocess_env

    code = ("import sys, rhovae.config as c; c.keys_with(c.schema.RESUMABLE, True); c.section_defaults(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(("
            "'rhovae.posteriors', 'rhovae.evaluation', 'rhovae.vae', 'rhovae.networks', 'rhovae.data'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=subprocess_env(), capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_resumed_config_takes_each_config_group_from_one_option(tmp_path):
    """A run trained with logger=none, resumed by a command that leaves the logger at its default (wandb), keeps
    its own logger; a command that switches it (logger=none on a wandb run) gets the new option whole."""
    from rhovae.config import as_dict, resumed_config

    plain = as_dict(load_config(compose(["logger=none"])))
    wandb = as_dict(load_config(compose(["logger=wandb"])))
    kept = resumed_config(plain, wandb, {"trainer.resume"}, tmp_path)
    assert kept["logger"] == plain["logger"] and load_config(kept).logger.name == "none"
    switched = resumed_config(wandb, plain, {"trainer.resume", "logger.name", "logger.image_every"}, tmp_path)
    assert switched["logger"] == plain["logger"] and load_config(switched).logger.name == "none"
