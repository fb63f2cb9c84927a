"""Flask: the request's identity bound for everything the request does.

::

    from otel_mixpanel.web.flask import MixpanelFlask

    app = Flask(__name__)
    MixpanelFlask(app, identify=lambda request: request.headers.get("X-User-Id"))

or, with an application factory, ``mixpanel = MixpanelFlask()`` then
``mixpanel.init_app(app)``. The user is, in order: what *identify* returns,
Flask-Login's ``current_user`` when it is authenticated. Options are those of
:class:`~otel_mixpanel.web.RequestIdentity`. A streamed response keeps the
identity while its body streams, after the view has returned.
"""

from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, Iterator, Optional

from otel_mixpanel.web._identity import RequestIdentity

__all__ = ["MixpanelFlask"]

_STACK = "_otel_mixpanel_identity"
_IDS = "_otel_mixpanel_ids"


class _Request:
    """Whether the request's own binding is still in force (teardown not run)."""

    open = True


class MixpanelFlask:
    """A Flask extension binding each request's identity (see the module docs)."""

    def __init__(self, app: Any = None, **options: Any) -> None:
        self.identity = RequestIdentity(**options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Any) -> None:
        """Bind the identity from ``before_request`` to ``teardown_request``."""
        from flask import request_started  # noqa: PLC0415

        app.before_request(self._enter)
        app.after_request(self._streamed)
        app.teardown_request(self._exit)
        # The OpenTelemetry instrumentation's before_request attaches a context
        # built from the request headers alone: ours must run after it, even
        # when the app was instrumented after this extension was added.
        request_started.connect(self._last, app, weak=False)
        app.extensions["otel_mixpanel"] = self

    def _last(self, sender: Any, **extra: Any) -> None:
        hooks = sender.before_request_funcs.setdefault(None, [])
        if hooks and hooks[-1] != self._enter:
            hooks.remove(self._enter)
            hooks.append(self._enter)

    def _enter(self) -> None:
        from flask import g, request  # noqa: PLC0415

        stack = contextlib.ExitStack()
        ids = stack.enter_context(self.identity.bind(
            request, cookies=request.cookies, peer=request.remote_addr,
            forwarded_for=request.headers.get("X-Forwarded-For"), user=_login_user(),
        ))
        setattr(g, _STACK, stack)
        setattr(g, _IDS, (ids, _Request()))

    def _streamed(self, response: Any) -> Any:
        from flask import g  # noqa: PLC0415

        found = g.get(_IDS)
        if found is not None and response.is_streamed:
            response.response = self._stream(response.response, *found)
        return response

    def _stream(self, body: Iterable[Any], ids: Dict[str, str], state: _Request) -> Iterator[Any]:
        """The body, with the request's identity bound while it is produced. Flask
        3.1 tears the request down when the view returns; before 3.1,
        stream_with_context keeps it (and its binding) until the body ends, and
        tears it down inside the body's last step, so binding again there would
        unbind out of order and leave this request's identity in force."""
        try:
            if state.open:
                yield from body
            else:
                with self.identity.rebind(ids):
                    yield from body
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()

    def _exit(self, error: Optional[BaseException] = None) -> None:
        from flask import g  # noqa: PLC0415

        stack = g.pop(_STACK, None)
        found = g.pop(_IDS, None)
        if found is not None:
            found[1].open = False
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
