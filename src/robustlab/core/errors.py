"""Errors raised by robustlab.

Every error names the problem and says how to fix it, so a user never has to read a traceback
from deep inside torch to learn what went wrong.
"""

from __future__ import annotations


class RobustlabError(Exception):
    """Base class of every error robustlab raises on purpose."""


class UnknownNameError(RobustlabError, KeyError):
    """A registry was asked for a name it does not hold; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RobustlabError, ValueError):
    """A component was registered twice under the same name."""


class DataNotFoundError(RobustlabError, FileNotFoundError):
    """Dataset files are missing; the message says how to provide them."""


class InputError(RobustlabError, ValueError):
    """An input tensor has the wrong shape, dtype or value range."""


class CheckpointError(RobustlabError, ValueError):
    """A checkpoint file is unsafe (a pickle), truncated, tampered with or otherwise unreadable."""
