"""Flask: the request's identity bound for everything the request does.

::

    from otel_mixpanel.web.flask import MixpanelFlask

    app = Flask(__name__)
    MixpanelFlask(app, identify=lambda request: request.headers.get("X-User-Id"))

or, with an application factory, ``mixpanel = MixpanelFlask()`` then
``mixpanel.init_app(app)``. The user is, in order: what *identify* returns,
Flask-Login's ``current_user`` when it is authenticated. Options are those of
:class:`~otel_mixpanel.web.RequestIdentity`. A streamed response keeps the
identity while it streams when its generator is wrapped in Flask's
``stream_with_context``, as Flask requires for the request context too.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

from otel_mixpanel.web._identity import RequestIdentity

__all__ = ["MixpanelFlask"]

_STACK = "_otel_mixpanel_identity"


class MixpanelFlask:
    """A Flask extension binding each request's identity (see the module docs)."""

    def __init__(self, app: Any = None, **options: Any) -> None:
        self.identity = RequestIdentity(**options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Bind the identity from ``before_request`` to ``teardown_request``."""
        app.before_request(self._enter)
        app.teardown_request(self._exit)
        app.extensions["otel_mixpanel"] = self

    def _enter(self) -> None:
        from flask import g, request  # noqa: PLC0415

        stack = contextlib.ExitStack()
        stack.enter_context(self.identity.bind(
            request, cookies=request.cookies, peer=request.remote_addr,
            forwarded_for=request.headers.get("X-Forwarded-For"), user=_login_user(),
        ))
        setattr(g, _STACK, stack)

    def _exit(self, error: Optional[BaseException] = None) -> None:
        from flask import g  # noqa: PLC0415

        stack = g.pop(_STACK, None)
        if stack is not None:
            stack.close()


def _login_user() -> Optional[str]:
    """Flask-Login's authenticated user id, when Flask-Login is in use."""
    try:
        from flask_login import current_user  # noqa: PLC0415
    except ImportError:
        return None
    try:
        if current_user and current_user.is_authenticated:
            return str(current_user.get_id())
    except Exception:  # no login manager on this app, or a user loader that fails
        return None
    return None
