"""What the commands share: the one-line error, the credential flags, and the settings they make."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from otel_mixpanel import environment_variables as env
from otel_mixpanel._config import REGION_HOSTS


class CliError(Exception):
    """A problem to report as one line on stderr, exiting with ``code`` (1 unless told).

    Example::

        raise CliError("no such spool directory: /tmp/nope")
    """

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# Flag, settings keyword, environment variable, help.
_CREDENTIAL_FLAGS = (
    ("--token", "token", env.OTEL_EXPORTER_MIXPANEL_TOKEN, "project token"),
    ("--region", "region", env.OTEL_EXPORTER_MIXPANEL_REGION,
     f"project's data residency: {', '.join(REGION_HOSTS)} (default us)"),
    ("--api-host", "api_host", env.OTEL_EXPORTER_MIXPANEL_API_HOST,
     "host or base URL, instead of the region's"),
    ("--project-id", "project_id", env.OTEL_EXPORTER_MIXPANEL_PROJECT_ID,
     "project id (required with a service account)"),
    ("--service-account-username", "service_account_username",
     env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_USERNAME, "service account username"),
    ("--service-account-secret", "service_account_secret",
     env.OTEL_EXPORTER_MIXPANEL_SERVICE_ACCOUNT_SECRET,
     "service account secret (prefer the variable: flags show in the process list)"),
)


def add_credential_flags(parser: argparse.ArgumentParser) -> None:
    """Add the flags that override the ``OTEL_EXPORTER_MIXPANEL_*`` credentials and region.

    Example::

        parser = argparse.ArgumentParser()
        add_credential_flags(parser)
        settings_kwargs(parser.parse_args(["--region", "eu"]))  # {"region": "eu"}
    """
    group = parser.add_argument_group(
        "Mixpanel project", "each flag defaults to its environment variable"
    )
    for flag, dest, variable, help_text in _CREDENTIAL_FLAGS:
        group.add_argument(flag, dest=dest, metavar="VALUE", help=f"{help_text} [{variable}]")
    group.add_argument(
        "--timeout", type=_positive_seconds, metavar="SECONDS",
        help=f"seconds a request may take (default 10) [{env.OTEL_EXPORTER_MIXPANEL_TIMEOUT}]",
    )


def settings_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """The keyword arguments of ``resolve_settings`` given on the command line (others: env)."""
    names = [dest for _, dest, _, _ in _CREDENTIAL_FLAGS] + ["timeout"]
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text!r}")
    return value
