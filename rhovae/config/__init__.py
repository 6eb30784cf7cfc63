"""Configuration, in one place: what a run's config may hold, how it is read, checked and saved, and Hydra's glue.

    schema.py      every key of a run, its type, its one default and its flags (``RunConfig`` and its sections)
    components.py  ``Registry``: components by name, their options read from their constructors, method labels
    load.py        ``load_config``: the one typed path from a Hydra config or a saved dict to a ``RunConfig``
    checks.py      ``validate_config``: range checks with one-line errors; ``resolve_device``
    saved.py       saved configs in today's keys, and what resuming or re-scoring a run may change
    keys.py        dotted keys: flatten, unflatten, sections, refusing a key that does not exist
    hydra_run.py   what ``train.py`` needs from Hydra (import it explicitly: it registers the ConfigStore)

Importing this package imports neither torch nor the model or evaluation code; the registries of the components
are read (and their modules imported) only by the functions that need them.
"""

from .checks import resolve_device, validate_config
from .keys import flatten, in_sections, reject_unknown_keys, unflatten
from .load import as_dict, component_options, load_config
from .saved import NOT_FACTORS, RESUMABLE_KEYS, rescoring_config, resumed_config, upgrade, with_todays_defaults
from .schema import (DatasetConfig, EvalSettings, GapSettings, ObjectiveConfig, RunConfig, TrainerConfig,
                     keys_with, section_defaults)

__all__ = [
    "DatasetConfig", "EvalSettings", "GapSettings", "NOT_FACTORS", "ObjectiveConfig", "RESUMABLE_KEYS", "RunConfig",
    "TrainerConfig", "as_dict", "component_options", "flatten", "in_sections", "keys_with", "load_config",
    "reject_unknown_keys", "rescoring_config", "resolve_device", "resumed_config", "section_defaults", "unflatten",
    "upgrade", "validate_config", "with_todays_defaults",
]
