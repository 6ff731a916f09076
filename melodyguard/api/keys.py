"""API keys: created once (shown once), stored only as a hash, listed and revoked.

A key reads ``mg_<key id>_<secret>``. The key id (8 hex digits) finds the row; the SHA-256 of
the whole key is compared in constant time. The secret has 192 random bits, so a fast hash is
enough (no password stretching is needed for keys that cannot be guessed).

Roles
-----
``admin``
    Everything, across all owners.
``owner``
    A rights holder: registers, lists and deletes its own works (``owner`` name fixed at key
    creation); checks and audits.
``screener``
    Checks and audits; cannot change or browse the catalogue.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._sqlite import ThreadConnections
from ..errors import ConfigError, InvalidInputError

__all__ = ["ROLES", "Principal", "KeyStore"]

ROLES = ("admin", "owner", "screener")
_KEY_RE = re.compile(r"^mg_([0-9a-f]{8})_([A-Za-z0-9_-]{20,64})$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY, hash TEXT NOT NULL, role TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, revoked_at TEXT
);
"""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, role and owner name (empty for admins and screeners)."""

    key_id: str
    role: str
    owner: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "role": self.role, "owner": self.owner or None}


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class KeyStore:
    """API keys in a SQLite file (by default ``api.sqlite`` in the catalogue folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cons = ThreadConnections(self.path)
        self._con = self._cons.get
        with self._con() as con:
            con.executescript(_SCHEMA)

    def create(self, *, role: str, owner: str = "", label: str = "") -> tuple[str, dict[str, Any]]:
        """Create a key. Returns ``(key, record)``; the key is not stored and cannot be shown again."""
        if role not in ROLES:
            raise InvalidInputError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
        owner = owner.strip()
        if role == "owner" and not owner:
            raise InvalidInputError("an owner key needs --owner NAME (the rights holder it acts for)")
        if role != "owner" and owner:
            raise InvalidInputError("only owner keys have an owner name")
        if len(owner) > 200 or len(label) > 200:
            raise InvalidInputError("owner and label are limited to 200 characters")
        key_id = secrets.token_hex(4)
        key = f"mg_{key_id}_{secrets.token_urlsafe(24)}"
        digest = hashlib.sha256(key.encode()).hexdigest()
        with self._con() as con:
            con.execute("INSERT INTO api_keys (key_id, hash, role, owner, label, created_at) VALUES (?,?,?,?,?,?)",
                        (key_id, digest, role, owner, label, _now()))
        return key, self.get(key_id)

    def get(self, key_id: str) -> dict[str, Any]:
        r = self._con().execute(
            "SELECT key_id, role, owner, label, created_at, revoked_at FROM api_keys WHERE key_id=?", (key_id,)
        ).fetchone()
        if r is None:
            raise ConfigError(f"no API key with id {key_id}")
        return dict(zip(("key_id", "role", "owner", "label", "created_at", "revoked_at"), r))

    def list(self) -> list[dict[str, Any]]:
        rows = self._con().execute(
            "SELECT key_id, role, owner, label, created_at, revoked_at FROM api_keys ORDER BY created_at, key_id"
        ).fetchall()
        return [dict(zip(("key_id", "role", "owner", "label", "created_at", "revoked_at"), r)) for r in rows]

    def revoke(self, key_id: str) -> dict[str, Any]:
        self.get(key_id)
        with self._con() as con:
            con.execute("UPDATE api_keys SET revoked_at=? WHERE key_id=? AND revoked_at IS NULL", (_now(), key_id))
        return self.get(key_id)

    def authenticate(self, key: str) -> Principal | None:
        """The principal of a valid, unrevoked key, else None."""
        m = _KEY_RE.match(key.strip())
        if not m:
            return None
        r = self._con().execute(
            "SELECT hash, role, owner, revoked_at FROM api_keys WHERE key_id=?", (m.group(1),)
        ).fetchone()
        if r is None or r[3] is not None:
            return None
        if not hmac.compare_digest(r[0], hashlib.sha256(key.strip().encode()).hexdigest()):
            return None
        return Principal(m.group(1), r[1], r[2])

    def close(self) -> None:
        self._cons.close()
