"""Request identity for web applications, in one line per framework.

- Flask: ``otel_mixpanel.web.flask.MixpanelFlask(app)``
- Django: ``"otel_mixpanel.web.django.MixpanelMiddleware"`` in ``MIDDLEWARE``
- ASGI (Starlette, FastAPI, any ASGI app):
  ``app.add_middleware(otel_mixpanel.web.asgi.MixpanelMiddleware)``

Each binds the request's identity (see :class:`RequestIdentity`) for
everything the request does: spans, log records, structlog events,
``track()`` calls, and, through W3C baggage, background jobs it enqueues.
"""

from __future__ import annotations

from otel_mixpanel.web._identity import RequestIdentity, cookie_name

__all__ = ["RequestIdentity", "cookie_name"]
