"""The ``otel-mixpanel`` command line.

::

    otel-mixpanel local [--port N]      a local Mixpanel with a live view, in the foreground
    otel-mixpanel check                 prove the credentials and region; stores nothing
    otel-mixpanel doctor [--app MODULE] find the set-up mistakes that lose events
    otel-mixpanel spool status DIR      what waits in a spool directory
    otel-mixpanel spool replay DIR      send it, with a progress bar

Errors are one line on stderr: exit 1, or 2 for a usage error. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import List, Optional

from otel_mixpanel._config import Settings, resolve_settings
from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._version import __version__

from ._check import explain, send_probe
from ._common import CliError, add_credential_flags, settings_kwargs
from ._doctor import diagnose
from ._gateway import add_gateway_flags, run_gateway
from ._local import run_local
from ._spool import run_replay, run_status

__all__ = ["build_parser", "main"]

PROG = "otel-mixpanel"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to get help), not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Exit 2 with ``prog: error: message``."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; ``build_parser().parse_args(["check", "--region", "eu"])``.

    >>> build_parser().parse_args(["spool", "status", "/tmp/s"]).directory
    '/tmp/s'
    """
    parser = _Parser(
        prog=PROG,
        description="Tools for otel-mixpanel: a local Mixpanel with a live view, a credentials "
        "check, and the spool.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    local = commands.add_parser(
        "local",
        help="run a local Mixpanel with a live view",
        description="Run a Mixpanel-compatible ingestion server in the foreground, print the "
        "environment that points an application at it, and serve a live view of what it "
        "receives at GET /. Ctrl-C stops it.",
    )
    local.add_argument("--port", type=_port, default=0, help="port (default: a free one)")
    local.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")

    check = commands.add_parser(
        "check",
        help="check the credentials and region (stores nothing)",
        description="Make one request to Mixpanel's /import that proves the credentials and "
        "region work without storing anything (an event dated 1970, which Mixpanel validates "
        "after authenticating and refuses). Exit 0 when they work, 1 with the reason if not.",
    )
    add_credential_flags(check)

    doctor = commands.add_parser(
        "doctor",
        help="find the set-up mistakes that lose events",
        description="Check the credentials, import your application's module (which sets up "
        "its telemetry) and report what would lose events: inputs not wired to Mixpanel, a "
        "root log level that hides INFO, a low span attribute limit, structlog without our "
        "processor, web frameworks without their instrumentation. Exit 1 on any problem.",
    )
    doctor.add_argument("--app", metavar="MODULE",
                        help="your application's module, imported as it starts (e.g. app)")
    add_credential_flags(doctor)

    gateway = commands.add_parser(
        "gateway",
        help="receive OTLP from any service and deliver its tagged telemetry",
        description="Serve OTLP/HTTP (POST /v1/traces and /v1/logs, protobuf or JSON, gzip) "
        "and deliver tagged spans and log records to Mixpanel through the sending queue. "
        "Answers 503 with Retry-After when the queue is full, so senders keep their data. "
        "SIGINT/SIGTERM stop it after delivering what waits (shutdown_timeout).",
    )
    add_gateway_flags(gateway)
    add_credential_flags(gateway)

    spool = commands.add_parser(
        "spool",
        help="inspect or replay a spool directory",
        description="Inspect or replay the spool directory (OTEL_EXPORTER_MIXPANEL_SPOOL_DIR) "
        "where exporters keep what Mixpanel could not take.",
    )
    spool_commands = spool.add_subparsers(dest="spool_command", metavar="COMMAND",
                                          parser_class=_Parser)
    spool_commands.required = True
    status = spool_commands.add_parser(
        "status", help="records, bytes, segments and age of what waits",
        description="Show what waits in a spool directory: records, bytes, segments, the "
        "oldest, and records per endpoint.",
    )
    status.add_argument("directory", metavar="DIR", help="spool directory")
    replay = spool_commands.add_parser(
        "replay", help="send what waits, oldest first",
        description="Send what waits in a spool directory, oldest first, with a progress bar on "
        "stderr. Safe to interrupt with Ctrl-C and to run again: a record leaves the spool only "
        "once Mixpanel answered for it. Exit 0 when the spool is empty afterwards, 1 when "
        "records remain.",
    )
    replay.add_argument("directory", metavar="DIR", help="spool directory")
    add_credential_flags(replay)
    return parser


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535, not {text!r}")
    return int(text)


def _run(args: argparse.Namespace) -> int:
    if args.command == "local":
        return run_local(args.host, args.port)
    if args.command == "check":
        settings = resolve_settings(**settings_kwargs(args))
        print(explain(settings, send_probe(settings)))
        return 0
    if args.command == "doctor":
        return _doctor(args)
    if args.command == "gateway":
        return run_gateway(args, settings_kwargs(args))
    if args.spool_command == "status":
        return run_status(args.directory)
    return run_replay(args.directory, settings_kwargs(args))


def _doctor(args: argparse.Namespace) -> int:
    found: Optional[Settings]
    try:
        found = resolve_settings(**settings_kwargs(args))
    except ConfigurationError as error:
        print(f"PROBLEM  {_as_flags(str(error))}")
        found = None
    findings = diagnose(found, args.app)
    for finding in findings:
        print(finding)
    problems = sum(not f.ok for f in findings) + (found is None)
    print(f"{problems} problem(s) that lose events" if problems else "no problem found")
    return 1 if problems else 0


def _as_flags(message: str) -> str:
    """Name settings as flags: the library says ``region= (or VAR)``, the CLI ``--region``.

    >>> _as_flags("region= (or OTEL_EXPORTER_MIXPANEL_REGION) must be one of us, eu, in")
    '--region (or OTEL_EXPORTER_MIXPANEL_REGION) must be one of us, eu, in'
    """
    return re.sub(
        r"\b([a-z_]+)= ", lambda match: "--" + match.group(1).replace("_", "-") + " ", message
    )


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``otel-mixpanel`` console script; returns the exit status.

    Example::

        main(["spool", "status", "/var/spool/mixpanel"])  # prints the status, returns 0
    """
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CliError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.code
    except ConfigurationError as error:
        print(f"{PROG}: {_as_flags(str(error))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        # A file system problem with the spool directory (permissions, a full disk...).
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
