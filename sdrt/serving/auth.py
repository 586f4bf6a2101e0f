"""API keys: read from a file, one per line, and checked on every route but /healthz.

Keys are compared with hmac.compare_digest against every configured key (no early exit), so the time of a
refusal says nothing about how much of a key was right.
"""

from __future__ import annotations

import hmac
import json
from pathlib import Path
from typing import Any, Iterable

from ..errors import UserError
from .api_errors import ApiError

OPEN_PATHS = frozenset({"/healthz", "/"})  # liveness, and the playground's page (it asks for the key itself)
OPEN_PREFIXES = ("/static/",)  # the playground's scripts and styles


def read_api_keys(path: Path) -> tuple[str, ...]:
    """The keys of a key file: one per line, blank lines and lines starting with # skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not the key's
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UserError(f"cannot read --api-key-file {path} ({reason}): give a readable UTF-8 text file "
                        "with one key per line") from None
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise UserError(f"--api-key-file {path} holds no key: put one key per line")
    for key in keys:
        if any(c.isspace() for c in key):
            raise UserError(f"--api-key-file {path} has a key with spaces inside: put one key per line")
        if not (key.isascii() and key.isprintable()):
            # An HTTP header carries bytes that servers read as latin-1, clients send UTF-8 or refuse: such a
            # key could never match. Refused at start rather than never matching.
            raise UserError(f"--api-key-file {path} has a key with a character outside printable ASCII, which "
                            "an Authorization header cannot carry: use letters, digits and punctuation")
    return keys


def key_matches(given: str, keys: Iterable[str]) -> bool:
    given_bytes = given.encode("utf-8", "surrogateescape")
    found = False
    for key in keys:
        found |= hmac.compare_digest(given_bytes, key.encode("utf-8"))
    return found


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class BearerAuth:
    """ASGI middleware: 401 with the JSON error body unless `Authorization: Bearer KEY` holds a known key."""

    def __init__(self, app: Any, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES):
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope.get("headers", []))
        if token is not None and key_matches(token, self.keys):
            await self.app(scope, receive, send)
            return
        error = ApiError(401, "unauthorized", "missing or wrong API key: send the header "
                                              "'Authorization: Bearer KEY' with a key from the server's "
                                              "--api-key-file")
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="sdrt"')]})
        await send({"type": "http.response.body", "body": body})
