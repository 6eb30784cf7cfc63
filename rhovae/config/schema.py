"""The typed configuration: every key of a run, its type, its one default and its two flags, as dataclasses.

``rhovae.config.hydra_run`` registers these with Hydra's ConfigStore and ``configs/config.yaml`` builds on them, so
Hydra refuses a key that does not exist and a value of the wrong type (``trainer.epochs=many``) before a run
starts; ``rhovae.config.checks`` adds the range checks. The YAML files in ``configs/`` pick and switch (groups,
experiments, launchers); an experiment states the values its protocol is defined by, even where they equal today's
default, so that a new default never changes a published protocol.

The four component groups (``dataset``, ``posterior``, ``networks``, ``logger``) are typed by the option chosen:
``DatasetConfig``, a logger's dataclass here, or the dataclass ``rhovae.config.components.component_config`` reads
from a registered component's constructor.

Most keys define what a run measures. A key made with ``key_field`` may carry two flags, read by the resume rules
and the result tables through ``keys_with`` so that no list of keys is kept by hand:

* ``resumable``: a resumed run may take a new value (how it executes, how long it trains, how its final scores
  are estimated);
* ``factor=False``: runs that differ in it are not different methods (how a run executes, how the test evaluation
  batches its work, an analysis added on top).

A section field carrying a flag (``logger``, ``gaps``, ``ais``) flags every key inside it. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from omegaconf import MISSING, OmegaConf

RESUMABLE = "may_change_on_resume"
FACTOR = "is_factor"


def key_field(default: Any = MISSING, *, resumable: bool = False, factor: bool = True,
              default_factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field with the two flags of a config key (their defaults mark a key that defines the method)."""
    metadata = {RESUMABLE: resumable, FACTOR: factor}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainerConfig:
    epochs: int = key_field(100, resumable=True)
    batch_size: int = 128
    lr: float = 1.0e-3
    max_batches: Optional[int] = None  # cap on batches per epoch (smoke runs); None = the whole training set
    device: str = key_field("auto", resumable=True, factor=False)  # auto | cpu | cuda
    # torch CPU threads; None = torch's default (launcher=joblib sets 1 per job)
    threads: Optional[int] = key_field(None, resumable=True, factor=False)
    # the training step's loss (forward and backward) through torch.compile: one compilation of about 30 s per run,
    # then 1.1x (diag) to 1.4x (planar) faster steps on a CPU (scripts/bench.py); the same random draws as eager
    # (inductor's fallback_random), rounding differs; each epoch's first batch is checked against eager PyTorch
    # (rhovae.compiled: a wrong kernel stops the run). Needs a C++ compiler on the CPU.
    compile: bool = key_field(False, resumable=True, factor=False)
    # subnormal floats (below 1.2e-38) flushed to zero (torch.set_flush_denormal: FTZ/DAZ on x86, flush on ARM).
    # Adam's first moment of a weight whose gradient is always zero (MNIST's blank border pixels, dead ReLU units)
    # decays to the smallest subnormal and stays there (0.9 times it rounds back to it); every step then computes
    # on about 180,000 subnormals through the CPU's slow path: a paper_cpu diag epoch grows from 3.7 s to
    # 6.3 s by epoch 4. The same parameters bit for bit in the runs checked (docs/speed.md).
    flush_denormal: bool = key_field(True, resumable=True, factor=False)
    # the encoder's and decoder's matrix products in training, forward and backward: float32 or bfloat16 (autocast;
    # heads, sampling, likelihood, KL and the parameters stay float32). Needs native bfloat16 (AVX-512 BF16, AMX or
    # a GPU); validation and test evaluation run in float32 whatever is set here (eval.iw_precision for the NLL).
    # 1.32x faster per diag step on one thread; moved a diag run's NLL as a change of machine does (docs/speed.md).
    precision: str = "float32"
    kl_warmup_epochs: float = 0  # the KL weight rises linearly 0 -> objective.beta over this many epochs
    adam_eps: float = 1.0e-8  # Adam's epsilon (the IWAE paper used 1e-4)
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam's beta1, beta2
    # the value Adam's second-moment estimate starts from (torch: 0). The IWAE paper's released code starts it at 1,
    # which with the usual bias correction shrinks the first few thousand steps (a built-in warm-up)
    adam_second_moment_init: float = 0.0
    # a stepped learning rate: stage i lasts lr_stage_epochs[i] epochs at lr * lr_stage_decay^i (the last stage's
    # rate holds after the list ends); empty = a constant lr
    lr_stage_epochs: List[int] = field(default_factory=list)
    lr_stage_decay: float = 1.0
    # stop after this many epochs without a better val ELBO; None = never
    patience: Optional[int] = key_field(10, resumable=True)
    # end this working stretch once this many epochs are done, the run saved and resumable (as a Ctrl-C between
    # epochs leaves it; summary status interrupted, exit status 0, a sweep goes on with its other jobs). Continue
    # with trainer.resume=true and a later epoch here, or null to train to trainer.epochs. None = no such stop
    stop_at_epoch: Optional[int] = key_field(None, resumable=True, factor=False)
    # tqdm bar per epoch (hidden automatically when stderr is not a terminal)
    progress: bool = key_field(True, resumable=True, factor=False)
    # continue the run in hydra.run.dir from its checkpoints/last.pt, with its saved config
    resume: bool = key_field(False, resumable=True, factor=False)
    # start afresh in a folder that already holds a run, deleting that run's outputs
    overwrite: bool = key_field(False, resumable=True, factor=False)
    # epochs after which the model of that epoch is saved and scored into milestones.jsonl (rhovae/milestones.py)
    milestones: List[int] = key_field(resumable=True, factor=False, default_factory=list)


@dataclass
class ObjectiveConfig:
    """What training minimises; every reported ELBO, NLL and gap is the true bound whatever is set here."""

    beta: float = 1.0  # weight on the KL (beta-VAE: beta > 1)
    free_bits: float = 0.0  # lambda in nats: sum over KL groups of max(lambda, batch-mean KL); 0 = the plain ELBO
    # k of the importance-weighted bound trained (IWAE, Burda et al. 2015): log mean_k p(x, z_k) / q(z_k | x);
    # 1 = the ELBO with the posterior's KL. Validation also scores this bound, and best.pt is the epoch it was highest
    iw_samples: int = 1


@dataclass
class EvalSettings:
    """The ``eval`` section: how the validation and the final test evaluation score a model (rhovae.evaluation)."""

    batch_size: int = key_field(1000, factor=False)  # also batches the per-epoch validation: fixed once a run started
    seed: int = 0
    iw_samples: int = key_field(5000, resumable=True)
    iw_chunk: int = key_field(200, resumable=True, factor=False)
    iw_batch_size: int = key_field(20, resumable=True, factor=False)
    # the decoder's matrix products in the importance-weighted NLL (test and milestones): float32 or bfloat16
    # (autocast; a 1.8x to 2.5x faster NLL on a CPU with AMX, which moved it by under 0.002 nats: docs/speed.md)
    iw_precision: str = key_field("float32", resumable=True)
    mean_samples: int = key_field(100, resumable=True)
    active_threshold: float = key_field(0.01, resumable=True)
    # I(x; z) averages over the draws of the first this many test images, against the mixture of all (None: all)
    information_images: Optional[int] = key_field(1000, resumable=True)
    # then also the inference-gap analysis (rhovae.gaps, the run's gaps.* settings)
    gaps: bool = key_field(False, resumable=True, factor=False)
    # trainer.milestones score the first milestone_images test images, the NLL with milestone_iw_samples (0: none)
    milestone_images: int = key_field(2000, resumable=True, factor=False)
    milestone_iw_samples: int = key_field(1000, resumable=True, factor=False)


@dataclass
class GapSettings:
    """The ``gaps`` section: the inference-gap analysis (rhovae.gaps, scripts/gaps.py, eval.gaps=true)."""

    n_images: int = 1000  # the first test images (the fixed test binarization)
    elbo_samples: int = 100  # samples behind each ELBO estimate (amortized, and start and end of the optimization)
    steps: int = 500  # Adam steps on each image's local parameters
    lr: float = 1e-2
    opt_samples: int = 8  # samples per Adam step
    iw_samples: int = 5000  # K for log p(x), drawn from the locally optimized q
    iw_chunk: int = 500
    batch_size: int = 100  # images optimized together
    seed: int = 0


@dataclass
class AisSettings:
    """The ``ais`` section: annealed importance sampling of log p(x) and its bidirectional check (rhovae.ais;
    ``scripts/evaluate.py RUN --estimator ais``, ``scripts/bdmc.py``)."""

    n_images: int = 500  # the first test images (of the fixed test binarization)
    steps: int = 1000  # intermediate distributions T between the initial distribution and the posterior
    schedule: str = "sigmoid"  # linear | sigmoid (Wu et al. 2017)
    sigmoid_delta: float = 4.0  # the sigmoid schedule's steepness
    start: str = "prior"  # prior | posterior (the run's own q(z|x); not for flows)
    chains: int = 16  # independent chains per image; log p(x) is the log-mean-exp of their weights
    leapfrog_steps: int = 10  # per HMC transition
    step_size: float = 0.05  # each image's initial leapfrog step size, then adapted
    target_accept: float = 0.65  # the acceptance rate the step size is adapted toward
    adapt_factor: float = 1.02  # the step size's factor per transition
    # the decoder's matrix products: float32 or bfloat16 (autocast; the likelihood and every sum stay float32)
    precision: str = "float32"
    batch_size: int = 100  # images annealed together (each with its chains)
    iw_samples: int = 1000  # K of the importance-weighted estimate on the same images, for the pairing (0: none)
    iw_chunk: int = 200  # its samples drawn at once per image
    seed: int = 0


@dataclass
class DatasetConfig:
    name: str = MISSING
    # torchvision layout: <root>/MNIST/raw/*-ubyte
    root: str = key_field("${oc.env:RHOVAE_DATA,./data}", resumable=True, factor=False)
    # fetch into root when the files are missing (internet)
    download: bool = key_field(True, resumable=True, factor=False)
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
    """The root of a run's config; the four component groups hold the dataclass of the option chosen for each."""

    seed: int = 0
    latent_dim: int = 32
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    eval: EvalSettings = field(default_factory=EvalSettings)
    gaps: GapSettings = key_field(resumable=True, factor=False, default_factory=GapSettings)
    ais: AisSettings = key_field(resumable=True, factor=False, default_factory=AisSettings)
    dataset: Any = MISSING
    posterior: Any = MISSING
    networks: Any = MISSING  # the encoder/decoder pair
    logger: Any = key_field(resumable=True, factor=False)
    # a study database of scripts/tune.py (outputs/tune/<name>.db): the run takes its study's best settings
    tuned: Optional[str] = None


# the dataclass of a group whose options all share one (the others are typed by the option chosen)
GROUP_SCHEMAS = {"dataset": DatasetConfig}


def keys_with(flag: str, value: bool) -> tuple[str, ...]:
    """The dotted keys (or whole sections) of a run's config whose field sets ``flag`` (``RESUMABLE`` or
    ``FACTOR``) to ``value``. Only keys made with ``key_field`` carry flags; sections are walked into."""
    found: list[str] = []

    def walk(cls: Any, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            if f.metadata.get(flag) == value:
                found.append(key)
                continue
            inner = GROUP_SCHEMAS.get(key) or (hints[f.name] if dataclasses.is_dataclass(hints[f.name]) else None)
            if inner is not None:
                walk(inner, f"{key}.")

    walk(RunConfig, "")
    return tuple(found)


def section_defaults() -> dict[str, Any]:
    """The defaults of every key outside the component groups, as a plain nested dict (``${...}`` unresolved)."""
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig))
    return {k: v for k, v in defaults.items() if v != MISSING}
