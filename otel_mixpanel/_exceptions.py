"""Errors raised by otel-mixpanel.

Only misconfiguration raises, and only at construction; problems while
exporting become results, counters and log lines, never exceptions in the
application's thread::

    MixpanelError
     └── ConfigurationError   (bad or missing settings, raised at construction)
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "MixpanelError"]


class MixpanelError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(MixpanelError, ValueError):
    """A setting is missing or invalid.

    The message names the argument and the environment variable to fix, and
    never contains a credential.
    """
