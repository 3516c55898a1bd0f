"""API keys: `Authorization: Bearer <key>` → the key's name, which owns the jobs it submits.

Keys are compared by SHA-256 digest, so the lookup time says nothing about a key's prefix.
With no keys configured (only allowed on a loopback bind, see settings) every caller is the
single local owner `LOCAL_OWNER`.
"""

from __future__ import annotations

import hashlib

from service.errors import Unauthorized

LOCAL_OWNER = "local"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    def __init__(self, pairs: dict[str, str]):
        self._by_digest = {_digest(key): name for name, key in pairs.items()}

    @property
    def open(self) -> bool:
        return not self._by_digest

    def owner(self, authorization: str | None) -> str:
        """The owner name for an Authorization header value. Raises Unauthorized."""
        if self.open:
            return LOCAL_OWNER
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send 'Authorization: Bearer <api key>'")
        name = self._by_digest.get(_digest(token.strip()))
        if name is None:
            raise Unauthorized("unknown API key")
        return name
