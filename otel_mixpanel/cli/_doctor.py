"""``otel-mixpanel doctor [--app MODULE]``: find the set-up mistakes that lose events.

Imports the application's module (which sets up its telemetry at import, as
``configure()`` or a hand-built pipeline does), then looks at the process as
the application left it: the credentials (one request that stores nothing,
as ``check``), which inputs reach Mixpanel (spans, log records, stdlib
logging, structlog), the root logger's level, the SDK's span attribute limit,
and web frameworks installed without the instrumentation that gives their
requests a span. Each finding says the fix; the exit status is 1 when any of
them would lose events.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from dataclasses import dataclass
from typing import Any, Iterable, List, Optional

from otel_mixpanel._config import Settings

from ._check import explain, send_probe
from ._common import CliError

# Framework module → the instrumentation packages that give its requests a span
# (the first is the one to install; FastAPI's covers the Starlette under it).
FRAMEWORKS = {
    "flask": ("flask",),
    "django": ("django",),
    "fastapi": ("fastapi",),
    "starlette": ("starlette", "fastapi"),
    "falcon": ("falcon",),
    "tornado": ("tornado",),
    "pyramid": ("pyramid",),
    "aiohttp": ("aiohttp_server",),
    "celery": ("celery",),
}
DEFAULT_SPAN_ATTRIBUTES = 128


@dataclass(frozen=True)
class Finding:
    """One line of the report: ``ok`` or a problem that loses events, with its fix."""

    ok: bool
    text: str

    def __str__(self) -> str:
        return ("ok       " if self.ok else "PROBLEM  ") + self.text


def diagnose(settings: Optional[Settings], app: Optional[str]) -> List[Finding]:
    """Every finding for the current process, after importing *app* when given."""
    findings: List[Finding] = []
    if settings is not None:
        try:
            findings.append(Finding(True, explain(settings, send_probe(settings))))
        except CliError as error:
            findings.append(Finding(False, str(error)))
    if app is not None:
        if "" not in sys.path:
            sys.path.insert(0, "")  # the application's module, from where doctor runs
        try:
            importlib.import_module(app)
        except Exception as error:  # its import failing is itself the finding
            return [*findings, Finding(False, f"importing {app} failed: "
                                              f"{type(error).__name__}: {error}")]
    findings.extend(_inputs())
    findings.extend(_frameworks())
    return findings


def _inputs() -> Iterable[Finding]:
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry._logs import get_logger_provider  # noqa: PLC0415

    spans = _ours(trace.get_tracer_provider(), "_active_span_processor")
    logs = _ours(get_logger_provider(), "_multi_log_record_processor")
    yield Finding(spans, "tagged spans reach Mixpanel" if spans else
                  "no Mixpanel exporter on the global tracer provider: tagged spans are "
                  "lost; call otel_mixpanel.configure() at start-up, or run under "
                  "opentelemetry-instrument with OTEL_TRACES_EXPORTER=mixpanel")
    yield Finding(logs, "tagged log records reach Mixpanel" if logs else
                  "no Mixpanel exporter on the global logger provider: tagged log records "
                  "and structlog events are lost; call otel_mixpanel.configure()")
    root = logging.getLogger()
    handlers = [h for h in root.handlers if "opentelemetry" in type(h).__module__
                or type(h).__name__ == "MixpanelLoggingHandler"]
    if handlers and root.getEffectiveLevel() > logging.INFO:
        level = logging.getLevelName(root.getEffectiveLevel())
        yield Finding(False, f"the root logger's level is {level}: log.info(..., "
                             "extra={'mixpanel.event': ...}) is never made; call "
                             "logging.getLogger().setLevel(logging.INFO)")
    elif handlers:
        yield Finding(True, "stdlib logging reaches Mixpanel (extra={'mixpanel.*': ...})")
    limit = _span_attribute_limit(trace.get_tracer_provider())
    if limit is not None and limit < DEFAULT_SPAN_ATTRIBUTES:
        yield Finding(False, f"spans keep at most {limit} attributes: the oldest tags, "
                             "mixpanel.event among them, are evicted beyond that; raise "
                             "SpanLimits(max_span_attributes=...)")
    elif limit is not None:
        yield Finding(True, f"spans keep up to {limit} attributes (the oldest are evicted "
                            "beyond that, mixpanel.event among them)")
    yield from _structlog()


def _ours(provider: Any, attribute: str) -> bool:
    from otel_mixpanel._compat import exporter_of  # noqa: PLC0415
    from otel_mixpanel._inputs._exporter import MixpanelExporterBase  # noqa: PLC0415

    multi = getattr(provider, attribute, None)
    processors = getattr(multi, "_span_processors", None) or getattr(
        multi, "_log_record_processors", None) or ()
    for processor in processors:
        if isinstance(exporter_of(processor), MixpanelExporterBase):
            return True
        intake = getattr(processor, "_intake", None)
        if intake is not None and any(intake.exporters):
            return True
    return False


def _span_attribute_limit(provider: Any) -> Optional[int]:
    limits = getattr(provider, "_span_limits", None)
    value = getattr(limits, "max_span_attributes", None)
    return value if isinstance(value, int) else None


def _structlog() -> Iterable[Finding]:
    if importlib.util.find_spec("structlog") is None:
        return
    import structlog  # noqa: PLC0415

    from otel_mixpanel.structlog import MixpanelProcessor  # noqa: PLC0415

    if not structlog.is_configured():
        return
    chain = structlog.get_config()["processors"]
    names = [type(p).__name__ for p in chain]
    if any(isinstance(p, MixpanelProcessor) for p in chain) or "LoggingInstrumentor" in names:
        yield Finding(True, "structlog events reach Mixpanel (mixpanel_* keys)")
    else:
        yield Finding(False, "structlog is configured without otel_mixpanel's processor: "
                             "events with mixpanel_* keys are lost; call "
                             "otel_mixpanel.configure(structlog=True) after structlog.configure")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _frameworks() -> Iterable[Finding]:
    for framework, instrumentations in FRAMEWORKS.items():
        if not _installed(framework):
            continue
        if not any(_installed(f"opentelemetry.instrumentation.{name}")
                   for name in instrumentations):
            package = "opentelemetry-instrumentation-" + instrumentations[0].replace("_", "-")
            yield Finding(False, f"{framework} is installed without {package}: its requests "
                                 "have no span, so tags set on trace.get_current_span() vanish;"
                                 f" pip install {package} (or opentelemetry-bootstrap -a "
                                 "install)")
