"""``otel-mixpanel check``: prove the credentials and region with one request that stores nothing.

The probe is ``POST /import?strict=1`` carrying one event whose ``time`` is 1970-01-01T00:00:01Z.
Mixpanel authenticates a request before it reads the records, and ``/import`` takes no event
before 1971-01-01, so:

* wrong token, service account, project id or region: 401 (nothing read);
* right ones: 400 with the probe in ``failed_records`` and ``num_records_imported: 0``: the
  only record was refused, so nothing was stored.

See docs/cli.md for the full reasoning.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote, urlsplit

import requests

from otel_mixpanel._config import REGION_HOSTS, Settings
from otel_mixpanel._version import __version__

from ._common import CliError

PROBE_EVENT = {
    "event": "otel-mixpanel check",
    "properties": {
        # Before 1971-01-01, so /import refuses it after authenticating: nothing is stored.
        "time": 1,
        "distinct_id": "otel-mixpanel-check",
        "$insert_id": "otel-mixpanel-check",
    },
}
_US_HOST = REGION_HOSTS["us"]


@dataclass(frozen=True)
class Probe:
    """What the probe request was and what came back (``status`` 0: no answer)."""

    url: str
    status: int
    body: Any = None
    error: Optional[str] = None
    location: Optional[str] = None


def send_probe(settings: Settings) -> Probe:
    """POST the probe to ``/import?strict=1`` with the settings' credentials; never raises.

    Example::

        probe = send_probe(resolve_settings(token="...", region="eu"))
        print(explain(settings, probe))
    """
    url = f"{settings.base_url}/import?strict=1"
    if settings.uses_service_account:
        user = f"{settings.service_account_username}:{settings.service_account_secret}"
        url += f"&project_id={quote(str(settings.project_id), safe='')}"
    else:
        user = f"{settings.token}:"
    headers = {
        "Authorization": "Basic " + base64.b64encode(user.encode("utf-8")).decode("ascii"),
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": f"otel-mixpanel/{__version__} check",
    }
    body = json.dumps([PROBE_EVENT]).encode("utf-8")
    try:
        response = requests.post(
            url, data=body, headers=headers, timeout=settings.timeout, allow_redirects=False
        )
    except requests.exceptions.SSLError as error:
        # Often an http-only server named without a scheme, which means https.
        return Probe(url, 0, error=f"TLS failed ({_short(error).strip()}); is it http://?")
    except requests.exceptions.Timeout:
        return Probe(url, 0, error=f"no answer within {settings.timeout:g} s")
    except requests.RequestException as error:
        return Probe(url, 0, error=_short(error))
    try:
        parsed: Any = response.json()
    except ValueError:
        parsed = response.text[:200]
    return Probe(url, response.status_code, parsed, location=response.headers.get("Location"))


def explain(settings: Settings, probe: Probe) -> str:
    """One line saying whether the credentials and region work; raises CliError if not.

    Example::

        try:
            print(explain(settings, send_probe(settings)))
        except CliError as error:
            print(error)  # e.g. "Mixpanel refused the project token (401: Invalid credentials)..."
    """
    host = urlsplit(settings.base_url).netloc
    who = (
        f"service account {settings.service_account_username!r} with project "
        f"{settings.project_id}" if settings.uses_service_account else "project token"
    )
    body = probe.body if isinstance(probe.body, dict) else {}
    reason = str(body.get("error") or probe.body or "no reason given")
    if probe.status == 0:
        raise CliError(f"cannot reach Mixpanel at {host}: {probe.error}")
    if probe.status == 400 and body.get("failed_records") and not body.get("num_records_imported"):
        return f"ok: Mixpanel at {host} accepted the {who}; nothing was stored"
    if probe.status == 200:
        # A server that does not enforce the 1971 limit stored the probe: still a success.
        return (
            f"ok: Mixpanel at {host} accepted the {who}, but it also stored the probe event "
            f"{PROBE_EVENT['event']!r} dated 1970-01-01"
        )
    if probe.status in (401, 403):
        raise CliError(f"Mixpanel refused the {who} ({probe.status}: {reason}){_hint(host)}")
    if probe.status == 400 and "project_id" in reason:
        raise CliError(
            f"Mixpanel needs the project id with a service account ({reason}): "
            "set --project-id or OTEL_EXPORTER_MIXPANEL_PROJECT_ID"
        )
    if 300 <= probe.status < 400:
        raise CliError(
            f"{host} redirected the request to {probe.location!r}: is the API host right?"
        )
    if probe.status == 429 or probe.status >= 500:
        raise CliError(f"Mixpanel at {host} is unavailable ({probe.status}: {reason}); try later")
    raise CliError(
        f"unexpected answer from {host} to POST /import ({probe.status}: {reason[:200]}); "
        "is the API host a Mixpanel ingestion host?"
    )


def _hint(host: str) -> str:
    if host == _US_HOST:
        return (
            "; check the token or service account, and if the project stores its data in the "
            "EU or India, set --region eu or in (OTEL_EXPORTER_MIXPANEL_REGION)"
        )
    if host in REGION_HOSTS.values():
        return f"; check the credentials, and that the project's data residency matches {host}"
    return "; check the credentials"


def _short(error: Exception) -> str:
    """The useful end of a requests error, e.g. "[Errno 111] Connection refused"."""
    text = str(error)
    found = re.findall(r"\[Errno -?\d+\] [^'\")]+|\[SSL: [^\]]+\][^'\"(]*", text)
    if found:
        return str(found[-1]).strip()
    if "Name or service not known" in text or "getaddrinfo" in text:
        return "host name not found"
    return f"{type(error).__name__}: {text[:200]}"
