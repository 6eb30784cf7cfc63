"""The typed configuration: every key of a run, its type and its one default, as dataclasses.

``rhovae.hydra_run`` registers these with Hydra's ConfigStore, and ``configs/config.yaml`` builds on them, so
Hydra itself refuses a key that does not exist and a value of the wrong type (``trainer.epochs=many``) before a
run starts; ``rhovae.config.validate_config`` adds the one-line range checks on top. The YAML files in
``configs/`` pick and switch (groups, experiments, launchers); an experiment states the values its protocol is
defined by, even where they equal today's default, so that a new default never changes a published protocol.

Sections of the run (``trainer``, ``objective``, ``eval``, ``gaps``) are dataclasses here or, where the code
reads them as settings, those settings themselves (``EvalSettings``, ``GapSettings``). A component's options
are the keyword arguments of its constructor: ``component_config`` turns a registered posterior or network pair
into the dataclass of its config group option, so a component registered in code is a config option with no
YAML file. A dataset option is ``DatasetConfig`` with its name.
"""

from __future__ import annotations

import collections.abc
import inspect
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any, List, Optional

from omegaconf import MISSING, OmegaConf

from .evaluation import EvalSettings
from .gaps import GapSettings
from . import key_roles
from .key_roles import ESTIMATION, RUNTIME, WORK_SPLIT
from .registry import Registry


@dataclass
class TrainerConfig:
    epochs: int = field(default=100, metadata=ESTIMATION)
    batch_size: int = 128
    lr: float = 1.0e-3
    max_batches: Optional[int] = None  # cap on batches per epoch (smoke runs); None = the whole training set
    device: str = field(default="auto", metadata=RUNTIME)  # auto | cpu | cuda
    # torch CPU threads; None = torch's default (launcher=joblib sets 1 per job)
    threads: Optional[int] = field(default=None, metadata=RUNTIME)
    kl_warmup_epochs: float = 0  # the KL weight rises linearly 0 -> objective.beta over this many epochs
    adam_eps: float = 1.0e-8  # Adam's epsilon (the IWAE paper used 1e-4)
    # a stepped learning rate: stage i lasts lr_stage_epochs[i] epochs at lr * lr_stage_decay^i (the last stage's
    # rate holds after the list ends); empty = a constant lr
    lr_stage_epochs: List[int] = field(default_factory=list)
    lr_stage_decay: float = 1.0
    # stop after this many epochs without a better val ELBO; None = never
    patience: Optional[int] = field(default=10, metadata=ESTIMATION)
    # tqdm bar per epoch (hidden automatically when stderr is not a terminal)
    progress: bool = field(default=True, metadata=RUNTIME)
    # continue the run in hydra.run.dir from its checkpoints/last.pt, with its saved config
    resume: bool = field(default=False, metadata=RUNTIME)
    # start afresh in a folder that already holds a run, deleting that run's outputs
    overwrite: bool = field(default=False, metadata=RUNTIME)
    # epochs after which the model of that epoch is saved and scored into milestones.jsonl (rhovae/milestones.py)
    milestones: List[int] = field(default_factory=list, metadata=WORK_SPLIT)


@dataclass
class ObjectiveConfig:
    """What training minimises; every reported ELBO, NLL and gap is the true bound whatever is set here."""

    beta: float = 1.0  # weight on the KL (beta-VAE: beta > 1)
    free_bits: float = 0.0  # lambda in nats: sum over KL groups of max(lambda, batch-mean KL); 0 = the plain ELBO
    # k of the importance-weighted bound trained (IWAE, Burda et al. 2015): log mean_k p(x, z_k) / q(z_k | x);
    # 1 = the ELBO with the posterior's KL
    iw_samples: int = 1


@dataclass
class DatasetConfig:
    name: str = MISSING
    # torchvision layout: <root>/MNIST/raw/*-ubyte
    root: str = field(default="${oc.env:RHOVAE_DATA,./data}", metadata=RUNTIME)
    download: bool = field(default=True, metadata=RUNTIME)  # fetch into root when the files are missing (internet)
    binarize: str = "dynamic"  # dynamic | static | none (continuous targets)
    binarize_seed: int = 0  # seeds static binarization and the fixed val/test binarization
    val_size: int = 10_000  # the last val_size training images are the validation set


@dataclass
class WandbLoggerConfig:
    """Weights & Biases, offline by default: no account needed; ``wandb sync`` uploads later."""

    name: str = "wandb"
    project: str = "rhovae"
    entity: Optional[str] = None
    mode: str = "${oc.env:WANDB_MODE,offline}"  # offline | online | disabled
    tags: List[str] = field(default_factory=list)  # added to the automatic tags <dataset>, <posterior>, <networks>
    image_every: int = 5  # log sample/reconstruction grids every N epochs; 0 = only at the end
    verbose: bool = False  # true shows W&B's own console output


@dataclass
class NoLoggerConfig:
    """Local files only (metrics.jsonl, summary.json, PNGs); W&B is never imported."""

    name: str = "none"
    image_every: int = 0


LOGGER_CONFIGS = {"wandb": WandbLoggerConfig, "none": NoLoggerConfig}


@dataclass
class RunConfig:
    """The root of a run's config; the four component groups are filled by the group chosen for each."""

    seed: int = 0
    latent_dim: int = 32
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    gaps: GapSettings = field(default_factory=GapSettings, metadata=WORK_SPLIT)
    dataset: Any = MISSING
    posterior: Any = MISSING
    networks: Any = MISSING  # the encoder/decoder pair
    logger: Any = field(default=MISSING, metadata=RUNTIME)
    # a study database of scripts/tune.py (outputs/tune/<name>.db): the run takes its study's best settings
    tuned: Optional[str] = None


def keys_with(role: str, value: bool) -> tuple[str, ...]:
    """The keys or whole sections of a run's config whose mark (``rhovae.key_roles``) sets ``role`` to ``value``."""
    return key_roles.keys_with(role, value, RunConfig, sections={"dataset": DatasetConfig})


def _config_type(hint: Any) -> Any:
    """A constructor's annotation as OmegaConf accepts it: sequences become lists."""
    origin = typing.get_origin(hint)
    if origin in (collections.abc.Sequence, list, tuple):
        return List[typing.get_args(hint)[0]] if typing.get_args(hint) else List[Any]
    return hint


def _default(value: Any) -> Any:
    if isinstance(value, tuple):
        return field(default_factory=lambda: list(value))
    return value


def component_config(registry: Registry, name: str) -> type:
    """The dataclass of ``name``'s config group option: ``name`` plus its constructor's options, typed."""
    factory = registry[name]
    hints = typing.get_type_hints(factory.__init__ if inspect.isclass(factory) else factory)
    fields = [("name", str, name)]
    for option, default in registry.defaults(name).items():
        fields.append((option, _config_type(hints.get(option, Any)), _default(default)))
    title = "".join(part.title() for part in name.split("_"))
    return make_dataclass(f"{title}{registry.kind.split('.')[0].title()}Config", fields)


def section_defaults() -> dict[str, Any]:
    """The defaults of every key outside the component groups, as a plain nested dict (``${...}`` unresolved)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    return {k: v for k, v in defaults.items() if v != MISSING}


RENAMED_SECTIONS = {"decoder": "networks"}  # old name -> today's; the old one is accepted until the next release


def upgrade(config: dict[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version (in a checkpoint, a summary, a W&B run) in today's keys: a section
    renamed since (``RENAMED_SECTIONS``) moves to its new name. Other keys are left as they are."""
    upgraded = dict(config)
    for old, new in RENAMED_SECTIONS.items():
        if old in upgraded and new not in upgraded:
            upgraded[new] = upgraded.pop(old)
    return upgraded
