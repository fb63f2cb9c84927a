"""Inputs: what the OpenTelemetry side shares before the convention.

``_exporter`` is the base of the span and log-record exporters (settings, the
destination's sending queue, resource properties, lifecycle); ``_intake`` is
the one ordered batch buffer that ``configure()`` and the zero-code set-up
put both signals through. The public adapters (``otel_mixpanel.trace``,
``otel_mixpanel.logs``, ``otel_mixpanel.structlog``) build on them.
"""
