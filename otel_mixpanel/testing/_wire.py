"""What travels over the wire: received requests, refused records, and body decoding."""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, TypeVar, Union, overload
from urllib.parse import parse_qs

_Default = TypeVar("_Default")


class Headers(Dict[str, str]):
    """Request headers as received, looked up case-insensitively (``headers["content-type"]``).

    Iteration shows the names as the client spelled them.
    """

    def _actual_name(self, name: str) -> str:
        if not super().__contains__(name):
            lowered = name.lower()
            for actual in self:
                if actual.lower() == lowered:
                    return actual
        return name

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(self._actual_name(name))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self._actual_name(name))

    @overload
    def get(self, name: str, default: None = None, /) -> Optional[str]: ...
    @overload
    def get(self, name: str, default: Union[str, _Default], /) -> Union[str, _Default]: ...
    def get(self, name: str, default: object = None, /) -> object:
        """The value of header ``name`` (any letter case), or ``default``."""
        actual = self._actual_name(name)
        return super().__getitem__(actual) if super().__contains__(actual) else default


@dataclass(frozen=True)
class ReceivedRequest:
    """One HTTP request the server received, and what it answered.

    ``body`` is raw, as received (still gzipped if it was sent gzipped); :meth:`json` decodes
    it. ``status`` is 0 and ``response`` is ``None`` when the connection was dropped or reset
    on purpose (see ``LocalMixpanel.fail_next`` and ``fail_for``). ``response`` is the JSON
    value answered (for ``/engage`` without ``verbose=1``, the number ``1`` or ``0``).
    """

    method: str
    path: str
    query: Dict[str, str]
    headers: Dict[str, str]
    body: bytes
    status: int
    response: object

    def json(self) -> Any:
        """The decoded payload: gunzipped if needed, NDJSON as a list, a form's ``data`` field.

        Raises ``ValueError`` if the body is not a payload of one of those forms.
        """
        text = decode_body(self.body, _header(self.headers, "Content-Encoding"), limit=None)
        content_type = _header(self.headers, "Content-Type") or ""
        return parse_payload(text, content_type)[0]


@dataclass(frozen=True)
class Rejection:
    """One record the server refused: the endpoint, its index in the request, and why."""

    endpoint: str
    index: int
    record: object
    reason: str


class PayloadTooLarge(Exception):
    """The decompressed body is over the limit."""


def _header(headers: Dict[str, str], name: str) -> Optional[str]:
    lowered = name.lower()
    for actual, value in headers.items():
        if actual.lower() == lowered:
            return value
    return None


def decode_body(body: bytes, content_encoding: Optional[str], *, limit: Optional[int]) -> str:
    """``body`` as text, gunzipped when ``content_encoding`` says gzip.

    Decompression stops just past ``limit`` bytes (raising :class:`PayloadTooLarge`), so that a
    small gzip bomb cannot exhaust memory. Raises ``ValueError`` for corrupt gzip, another
    encoding, or text that is not UTF-8.
    """
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "gzip":
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            if limit is None:
                raw = decompressor.decompress(body) + decompressor.flush()
            else:
                raw = decompressor.decompress(body, limit + 1)
        except zlib.error as error:
            raise ValueError(f"body is not valid gzip: {error}") from error
        if not decompressor.eof:
            if limit is not None and len(raw) > limit:
                raise PayloadTooLarge
            raise ValueError("body is not valid gzip: truncated stream")
    elif encoding == "identity":
        raw = body
    else:
        raise ValueError(f"unsupported Content-Encoding {content_encoding!r}")
    if limit is not None and len(raw) > limit:
        raise PayloadTooLarge
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"body is not UTF-8: {error}") from error


def parse_payload(text: str, content_type: str) -> tuple[object, Dict[str, str]]:
    """The JSON payload in ``text`` and any other form fields (``verbose``, ``ip``, ...).

    JSON by default; one JSON value per line for ``application/x-ndjson``; the ``data`` field
    of an ``application/x-www-form-urlencoded`` form. Raises ``ValueError`` when malformed.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/x-ndjson":
        lines: List[object] = [json.loads(line) for line in text.splitlines() if line.strip()]
        return lines, {}
    if media_type == "application/x-www-form-urlencoded":
        fields = {
            name: values[-1]
            for name, values in parse_qs(text, keep_blank_values=True, strict_parsing=False).items()
        }
        if "data" not in fields:
            raise ValueError("form body has no 'data' field")
        return json.loads(fields.pop("data")), fields
    return json.loads(text), {}
