"""Exceptions whose message is the whole story: ``train.py`` prints them as one line, without a traceback."""


class RhovaeError(Exception):
    """Base class for errors caused by the user's input or environment, not by a bug."""


class ConfigError(RhovaeError, ValueError):
    """A configuration value is out of range or unknown; the message names key, value and what is accepted."""


class DatasetError(RhovaeError):
    """A dataset is missing, cannot be downloaded, or is corrupt; the message names the folder and files."""

