"""``otel-mixpanel gateway``: the OTLP gateway in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any, Dict

from ._common import CliError

INGEST_TOKEN = "OTEL_EXPORTER_MIXPANEL_GATEWAY_INGEST_TOKEN"


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


def run_gateway(args: argparse.Namespace, credentials: Dict[str, Any]) -> int:
    """Serve until a signal, then drain the queue within its shutdown budget."""
    try:
        from otel_mixpanel.gateway import Gateway, GatewaySettings  # noqa: PLC0415
    except ImportError as error:  # pragma: no cover - without the extra
        raise CliError(f"the gateway needs its extra: pip install 'otel-mixpanel[gateway]' "
                       f"({error})") from error
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
        url = gateway.start()
    except OSError as error:
        gateway.stop(0)
        raise CliError(f"cannot listen on {args.host}:{args.port}: {error}") from error
    print(f"otel-mixpanel gateway: OTLP/HTTP on {url}/v1/traces and {url}/v1/logs",
          file=sys.stderr, flush=True)
    stop.wait()
    print("otel-mixpanel gateway: stopping, delivering what waits", file=sys.stderr, flush=True)
    gateway.stop()
    return 0
