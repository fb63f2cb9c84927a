"""``otel-mixpanel gateway``: the OTLP gateway in the foreground until SIGINT/SIGTERM,
logging to stderr as text or one JSON object per line (``--log-format json``)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from typing import Any, Dict, Optional, Sequence

from otel_mixpanel._exceptions import ConfigurationError

from ._common import CliError

INGEST_TOKEN = "OTEL_EXPORTER_MIXPANEL_GATEWAY_INGEST_TOKEN"
LOG_FORMAT = "OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_FORMAT"
LOG_LEVEL = "OTEL_EXPORTER_MIXPANEL_GATEWAY_LOG_LEVEL"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

_logger = logging.getLogger("otel_mixpanel.gateway")


def add_gateway_flags(parser: argparse.ArgumentParser) -> None:
    """The gateway's own flags (the Mixpanel credentials come with add_credential_flags)."""
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs a token)")
    parser.add_argument("--port", type=int, default=4318, help="port (default 4318, OTLP/HTTP)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="also serve OTLP/gRPC on this port (usually 4317)")
    parser.add_argument("--ingest-token", default=None,
                        help=f"bearer token senders must send (default: ${INGEST_TOKEN})")
    parser.add_argument("--allow-unauthenticated", action="store_true",
                        help="listen beyond loopback without an ingest token")
    parser.add_argument("--tls-certfile", default=None, help="PEM certificate chain: serve TLS")
    parser.add_argument("--tls-keyfile", default=None, help="PEM private key for --tls-certfile")
    parser.add_argument("--spool-dir", default=None,
                        help="keep what waits on disk (default: $OTEL_EXPORTER_MIXPANEL_SPOOL_DIR)")
    parser.add_argument("--log-format", type=str.lower, choices=LOG_FORMATS, default=None,
                        help="stderr log lines as text (the default) or json, one object per "
                        f"line (default: ${LOG_FORMAT})")
    parser.add_argument("--log-level", type=str.lower, choices=LOG_LEVELS, default=None,
                        help=f"least severe level logged (default info, or ${LOG_LEVEL}; "
                        "debug adds uvicorn's lines, one per request)")


def log_choice(given: Optional[str], variable: str, choices: Sequence[str], default: str,
               flag: str) -> str:
    """The flag, else the environment variable, else *default*; a value not
    among *choices* is an error, never a silent fallback.

    >>> log_choice(None, "NO_SUCH_VARIABLE", ("text", "json"), "text", "--log-format")
    'text'
    """
    if given is not None:
        return given
    value = os.environ.get(variable, "").strip().lower() or default
    if value not in choices:
        raise CliError(f"{variable} must be one of {', '.join(choices)}, not {value!r} "
                       f"(or give {flag})", code=2)
    return value


def run_gateway(args: argparse.Namespace, credentials: Dict[str, Any]) -> int:
    """Serve until a signal, then drain the queue within its shutdown budget."""
    log_format = log_choice(args.log_format, LOG_FORMAT, LOG_FORMATS, "text", "--log-format")
    level = log_choice(args.log_level, LOG_LEVEL, LOG_LEVELS, "info", "--log-level")
    try:
        from otel_mixpanel.gateway._logs import configure_process_logging  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - without the extra
        raise CliError(f"the gateway needs its extra: pip install 'otel-mixpanel[gateway]' "
                       f"({error})") from error
    # The command owns its process: every logger (ours, uvicorn's, grpc's) goes
    # through one handler. The library itself never configures logging.
    configure_process_logging(log_format, level)
    if log_format == "text":
        return _serve(args, credentials)
    try:
        return _serve(args, credentials)
    except (CliError, ConfigurationError) as error:
        # JSON lines only on stderr: the error is a record too, not main()'s plain line.
        from otel_mixpanel.cli import _as_flags  # noqa: PLC0415 - cli imports this module

        _logger.error("%s", _as_flags(str(error)), extra={"event": "failed"})
        return error.code if isinstance(error, CliError) else 1


def _serve(args: argparse.Namespace, credentials: Dict[str, Any]) -> int:
    from otel_mixpanel.gateway import Gateway, GatewaySettings  # noqa: PLC0415

    settings = GatewaySettings(
        host=args.host, port=args.port, grpc_port=args.grpc_port,
        tls_certfile=args.tls_certfile, tls_keyfile=args.tls_keyfile,
        allow_unauthenticated=args.allow_unauthenticated,
        ingest_token=args.ingest_token or os.environ.get(INGEST_TOKEN) or None,
    )
    options = dict(credentials)
    if args.spool_dir:
        options["spool_dir"] = args.spool_dir
    gateway = Gateway(settings, **options)
    # Before listening: a signal that comes as soon as the port answers still
    # stops the gateway the orderly way (delivering what waits).
    stop = threading.Event()
    for name in ("SIGINT", "SIGTERM"):
        signal.signal(getattr(signal, name), lambda *_: stop.set())
    try:
        gateway.start()  # logs where it listens ("listening" records)
    except OSError as error:
        gateway.stop(0)
        raise CliError(f"cannot listen on {args.host}:{args.port}: {error}") from error
    stop.wait()
    gateway.stop()  # logs "stopping", then "drained" with the final counters
    return 0
