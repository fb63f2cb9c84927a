"""The gateway's OTLP/gRPC services (``TraceService/Export``, ``LogsService/Export``),
on grpcio: the Collector's load-balancing exporter speaks only gRPC.

A full sending queue answers ``UNAVAILABLE`` with ``google.rpc.RetryInfo``, so
senders keep the data and retry; a missing ingest token ``UNAUTHENTICATED``.
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, Optional

__all__ = ["start_grpc"]


def start_grpc(gateway: Any, host: str, port: int) -> Any:
    """A started grpc server for *gateway*; ``server.bound_port`` is its port."""
    import grpc  # noqa: PLC0415
    from opentelemetry.proto.collector.logs.v1 import (  # noqa: PLC0415
        logs_service_pb2_grpc,
    )
    from opentelemetry.proto.collector.trace.v1 import (  # noqa: PLC0415
        trace_service_pb2_grpc,
    )

    settings = gateway.settings

    def admit(request: Any, context: Any) -> None:
        """Abort the call unless it may go on (token, room)."""
        if settings.ingest_token is not None:
            metadata = dict(context.invocation_metadata())
            if metadata.get("authorization") != f"Bearer {settings.ingest_token}":
                gateway.refused("unauthenticated")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
        if not gateway.fits(request.ByteSize()):
            context.set_trailing_metadata((("google.rpc.retryinfo-bin", _retry_info(
                settings.retry_after)),))
            context.abort(grpc.StatusCode.UNAVAILABLE, "the sending queue is full")

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            admit(request, context)
            return gateway.deliver(request, traces=True).message(traces=True)

    class Logs(logs_service_pb2_grpc.LogsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            admit(request, context)
            return gateway.deliver(request, traces=False).message(traces=False)

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=settings.max_concurrent_requests,
                                   thread_name_prefix="otel-mixpanel-grpc"),
        maximum_concurrent_rpcs=settings.max_concurrent_requests,
        options=[("grpc.max_receive_message_length", settings.max_request_bytes)],
    )
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)  # type: ignore[no-untyped-call]
    logs_service_pb2_grpc.add_LogsServiceServicer_to_server(Logs(), server)  # type: ignore[no-untyped-call]
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if settings.tls_certfile is not None:
        with open(settings.tls_keyfile, "rb") as key, open(settings.tls_certfile, "rb") as chain:
            credentials = grpc.ssl_server_credentials([(key.read(), chain.read())])
        server.bound_port = server.add_secure_port(address, credentials)
    else:
        server.bound_port = server.add_insecure_port(address)
    server.start()
    return server


def _retry_info(seconds: int) -> bytes:
    from google.protobuf.duration_pb2 import Duration  # noqa: PLC0415
    from google.rpc.error_details_pb2 import RetryInfo  # noqa: PLC0415

    info: Optional[Any] = RetryInfo(retry_delay=Duration(seconds=seconds))
    return bytes(info.SerializeToString()) if info is not None else b""
