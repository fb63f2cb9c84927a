"""Inputs: what the OpenTelemetry side shares before the convention.

``_exporter`` is the base of the span and log-record exporters (settings, the
destination's sending queue, resource properties, lifecycle); ``_intake`` is
the one ordered batch buffer that ``configure()`` and the zero-code set-up
put both signals through (under load its batches are translated by the
helper process of ``otel_mixpanel._offload``); ``_track`` is ``track()`` and
the profile calls; ``_otlp`` reads OTLP requests for the gateway. The public
adapters (``otel_mixpanel.trace``, ``otel_mixpanel.logs``,
``otel_mixpanel.structlog``, ``otel_mixpanel.gateway``) build on them.
"""
