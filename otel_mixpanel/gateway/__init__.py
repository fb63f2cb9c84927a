"""Gateway mode: tagged OTLP telemetry from any service, in any language.

Services (or an OpenTelemetry Collector in front of them) send OTLP/HTTP to
the gateway; it translates tagged spans and log records with the same
convention as the in-process exporters and delivers them through the same
sending queue (memory, or disk with ``spool_dir``). Untagged telemetry is
discarded without being stored. The Mixpanel credentials stay here.

::

    otel-mixpanel gateway --port 4318          # OTEL_EXPORTER_MIXPANEL_TOKEN set

or embedded::

    gateway = Gateway(GatewaySettings(port=0), token="...")
    url = gateway.start()   # http://127.0.0.1:<port>
    ...
    gateway.stop()

Install with ``pip install 'otel-mixpanel[gateway]'``.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

from otel_mixpanel._config import is_loopback
from otel_mixpanel._convention._translate import Record, carries_messages
from otel_mixpanel._exceptions import ConfigurationError
from otel_mixpanel._inputs._exporter import MixpanelExporterBase
from otel_mixpanel._inputs._otlp import OTLPInput, log_records, span_records
from otel_mixpanel._model import Message
from otel_mixpanel._stats import records_text
from otel_mixpanel.gateway._logs import Refusals

__all__ = ["Gateway", "GatewaySettings"]

_logger = logging.getLogger(__name__)

_IDS = ("traceId", "spanId", "parentSpanId")


@dataclass(frozen=True)
class GatewaySettings:
    """Where the gateway listens and what it accepts.

    Binding anything but loopback requires *ingest_token* (senders send it as
    ``Authorization: Bearer <token>``, as Collectors' ``headers`` do) unless
    *allow_unauthenticated* says otherwise. *max_request_bytes* bounds a body
    after decompression; *retry_after* is the wait (seconds) a busy answer asks for.
    """

    host: str = "127.0.0.1"
    port: int = 4318
    grpc_port: Optional[int] = None  # OTLP/gRPC too (4317 is its usual port; 0: a free one)
    ingest_token: Optional[str] = None
    allow_unauthenticated: bool = False
    max_request_bytes: int = 16 * 1024 * 1024
    max_concurrent_requests: int = 16
    retry_after: int = 5
    tls_certfile: Optional[str] = None  # PEM certificate chain: serve HTTPS (and gRPC over TLS)
    tls_keyfile: Optional[str] = None

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and self.ingest_token is None and (
            not self.allow_unauthenticated
        ):
            raise ConfigurationError(
                f"the gateway would listen on {self.host} without an ingest token: anyone "
                "reaching it could send to your Mixpanel project; set ingest_token "
                "(--ingest-token), or allow_unauthenticated=True (--allow-unauthenticated)")
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ConfigurationError("TLS needs both tls_certfile and tls_keyfile")
        for path in (self.tls_certfile, self.tls_keyfile):
            if path is not None and not os.path.isfile(path):
                raise ConfigurationError(f"TLS file not found: {path}")
        for name in ("max_request_bytes", "max_concurrent_requests", "retry_after"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be a positive integer")


class _Ingest(MixpanelExporterBase):
    """The gateway's side of the shared exporter base: settings, queue, stats."""

    def _records(self, batch: Any) -> Iterator[Record]:  # pragma: no cover - not an SDK exporter
        raise NotImplementedError


REJECTED = ("tagged {} made no Mixpanel message (invalid tags; the gateway's stats() "
            "and log say which)")


class Outcome:
    """What one request became: an error for a 400, else the OTLP response,
    with a partial success when tagged telemetry was refused."""

    def __init__(self, error: Optional[str] = None, rejected: int = 0) -> None:
        self.error = error
        self.rejected = rejected

    def message(self, traces: bool) -> Any:
        """The Export*ServiceResponse (a partial success when some were rejected)."""
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: PLC0415
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: PLC0415

        if traces:
            response: Any = trace_service_pb2.ExportTraceServiceResponse()
            if self.rejected:
                response.partial_success.rejected_spans = self.rejected
                response.partial_success.error_message = REJECTED.format("spans")
        else:
            response = logs_service_pb2.ExportLogsServiceResponse()
            if self.rejected:
                response.partial_success.rejected_log_records = self.rejected
                response.partial_success.error_message = REJECTED.format("log records")
        return response

    def response(self, as_json: bool, traces: bool) -> bytes:
        """That response in the request's encoding."""
        message = self.message(traces)
        if as_json:
            from google.protobuf import json_format  # noqa: PLC0415

            return json.dumps(json_format.MessageToDict(message)).encode()
        return bytes(message.SerializeToString())


class Gateway:
    """An OTLP receiver that delivers tagged telemetry to Mixpanel (see the module docs).

    *exporter_options* are those of :class:`otel_mixpanel.MixpanelSpanExporter`
    (token, region, spool_dir, queue_max_bytes, ...), each defaulting to its
    ``OTEL_EXPORTER_MIXPANEL_*`` variable.

    It logs to the ``otel_mixpanel.gateway`` logger (records with an ``event``
    field: ``listening``, ``refused``, rate limited, ``stopping``, ``drained``)
    and never configures logging itself.
    """

    def __init__(self, settings: Optional[GatewaySettings] = None, **exporter_options: Any) -> None:
        self.settings = settings or GatewaySettings()
        try:
            self._input = OTLPInput()
            import uvicorn  # noqa: F401, PLC0415 - the HTTP server, checked before anything starts

            if self.settings.grpc_port is not None:
                import grpc  # noqa: F401, PLC0415
        except ImportError as error:
            raise ConfigurationError(
                f"the gateway needs its extra: pip install 'otel-mixpanel[gateway]' ({error})"
            ) from error
        self._exporter = _Ingest(**exporter_options)
        self.stats = self._exporter._stats
        self._server: Any = None
        self._grpc: Any = None
        self.grpc_port: Optional[int] = None
        self._thread: Optional[threading.Thread] = None
        self._socket: Optional[socket.socket] = None
        self._refusals = Refusals(_logger)
        self._listening = False

    def room(self) -> int:
        """Bytes the sending queue can still take before the gateway answers busy."""
        settings = self._exporter._settings
        bound = settings.spool_max_bytes if settings.spool_dir else settings.queue_max_bytes
        return int(bound * 0.9) - self._exporter._queue.waiting()[1]

    def fits(self, size: int) -> bool:
        """Whether a request of *size* bytes may be queued; a refusal is counted
        (the sender keeps the data and retries). Never lets the queue evict."""
        if self.room() >= size:
            return True
        self.refused()
        return False

    def refused(self, reason: str = "busy", detail: str = "") -> None:
        """Count a refused request and log it, rate limited: ``busy`` (queue
        full, or too many requests in flight; also counted ``gateway_refused_busy``),
        ``unauthenticated``, ``too_large``, ``unsupported_media_type``, ``bad_request``."""
        if reason == "busy":
            self.stats.dropped("gateway_refused_busy", log=False)
        self._refusals.note(reason, detail)

    def ingest(self, body: bytes, as_json: bool, traces: bool) -> Outcome:
        """Parse, translate and queue one request body; never waits for Mixpanel."""
        try:
            parse = self._input.parse_traces if traces else self._input.parse_logs
            request, _ = parse(_protobuf_of_json(body, traces) if as_json else body)
        except Exception as error:  # the sender must not retry what can never parse
            self.stats.dropped("gateway_bad_request", log=False)  # the refusal's line says it
            self.refused("bad_request", f"cannot parse the OTLP body: {type(error).__name__}")
            return Outcome(f"cannot parse the OTLP body: {type(error).__name__}")
        return self.deliver(request, traces=traces)

    def deliver(self, request: Any, *, traces: bool) -> Outcome:
        """Translate and queue a parsed Export*ServiceRequest; never waits for
        Mixpanel. Tagged telemetry that makes no message is counted rejected."""
        properties = self._exporter._properties_of_resource
        records = (span_records(request, properties) if traces
                   else log_records(request, properties, self._own))
        messages: List[Message] = []
        rejected = 0
        for record in records:
            made = self._exporter._messages((record,))
            if not made and carries_messages(record.attributes):
                rejected += 1
            messages.extend(made)
        self._exporter._submit(messages, wait=False)
        return Outcome(rejected=rejected)

    def _own(self, scope: str) -> None:
        self.stats.dropped("own_log_record", detail=scope)

    def status(self) -> Dict[str, Any]:
        """The counters (as ``stats()`` of an exporter), the room left, and the
        requests ``refused`` since start by reason."""
        return {**self.stats.snapshot(), "room_bytes": self.room(),
                "refused": self._refusals.totals()}

    def app(self) -> Any:
        """The ASGI application (to serve it yourself)."""
        from otel_mixpanel.gateway._app import OTLPApp  # noqa: PLC0415

        return OTLPApp(self)

    def start(self) -> str:
        """Serve in a background thread; returns the base URL once listening."""
        import uvicorn  # noqa: PLC0415

        self._socket = socket.socket(socket.AF_INET6 if ":" in self.settings.host
                                     else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((self.settings.host, self.settings.port))
        port = self._socket.getsockname()[1]
        # log_config=None: uvicorn's loggers stay as the process set them (the
        # command formats them like ours; an embedding application decides).
        config = uvicorn.Config(self.app(), log_config=None, log_level=None,
                                timeout_graceful_shutdown=5,
                                ssl_certfile=self.settings.tls_certfile,
                                ssl_keyfile=self.settings.tls_keyfile)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True,
                                        name="otel-mixpanel-gateway")
        self._thread.start()
        if self.settings.grpc_port is not None:
            from otel_mixpanel.gateway._grpc import start_grpc  # noqa: PLC0415

            self._grpc = start_grpc(self, self.settings.host, self.settings.grpc_port)
            self.grpc_port = self._grpc.bound_port
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's server did not start")
            time.sleep(0.01)
        host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
        scheme = "https" if self.settings.tls_certfile else "http"
        url = f"{scheme}://{host}:{port}"
        if self._server.started:
            self._listening = True
            _logger.info("OTLP/HTTP on %s/v1/traces and %s/v1/logs", url, url,
                         extra={"event": "listening", "protocol": "http", "url": url})
        if self.grpc_port is not None:
            grpc_url = f"{scheme}://{host}:{self.grpc_port}"
            self._listening = True
            _logger.info("OTLP/gRPC on %s", grpc_url,
                         extra={"event": "listening", "protocol": "grpc", "url": grpc_url})
        return url

    def stop(self, timeout_millis: Optional[float] = None) -> None:
        """Stop listening, then drain the sending queue within its shutdown budget."""
        listening, self._listening = self._listening, False
        budget = self._exporter._shutdown_budget(timeout_millis)
        began = time.monotonic()
        if listening:
            waiting = self._exporter._queue.waiting()[0]
            _logger.info("stopping: no longer listening; delivering what waits (%s now) "
                         "for at most %.1f s", records_text(waiting), budget,
                         extra={"event": "stopping", "waiting": waiting,
                                "budget_seconds": budget})
        if self._grpc is not None:
            self._grpc.stop(grace=5).wait(10)
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._refusals.flush()  # no request comes any more: the held-back counts
        self._exporter.shutdown(timeout_millis)
        if listening:
            self._drained(budget, time.monotonic() - began)

    def _drained(self, budget: float, seconds: float) -> None:
        # None: another exporter in this process still uses the queue (not closed).
        delivered_all = self._exporter._queue.delivered_all is not False
        status = self.status()
        waiting = status["waiting"]["records"]
        lost = status["dropped"].get("undelivered_at_shutdown", 0)
        fields = {"event": "drained", "delivered_all": delivered_all, "seconds": round(seconds, 3),
                  "budget_seconds": budget, "stats": status}
        if delivered_all:
            _logger.info("drained: everything delivered in %.1f s (%d sent since start)",
                         seconds, sum(status["sent"].values()), extra=fields)
        else:
            _logger.warning("drained partly: the %.1f s budget ran out with records left "
                            "(%d kept in the spool, %d lost)", budget, waiting, lost,
                            extra=fields)


def _protobuf_of_json(body: bytes, traces: bool) -> bytes:
    """OTLP/JSON as protobuf bytes: ids are hex there (protobuf's JSON reads base64)."""
    from google.protobuf import json_format  # noqa: PLC0415
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2  # noqa: PLC0415
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: PLC0415

    data = json.loads(body)
    _base64_ids(data)
    message: Any = (trace_service_pb2.ExportTraceServiceRequest() if traces
                    else logs_service_pb2.ExportLogsServiceRequest())
    json_format.ParseDict(data, message, ignore_unknown_fields=True)
    return bytes(message.SerializeToString())


def _base64_ids(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _IDS and isinstance(value, str) and value:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            else:
                _base64_ids(value)
    elif isinstance(node, list):
        for item in node:
            _base64_ids(item)
