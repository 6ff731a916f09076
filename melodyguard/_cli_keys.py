"""``melodyguard keys``: create, list and revoke API keys (stored hashed in the catalogue's
``api.sqlite``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .cli import EXIT_OK, command


def _setup_keys(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="keys_action", metavar="ACTION", required=True)
    c = sub.add_parser("create", help="create a key (printed once; only its hash is kept)")
    c.add_argument("--role", required=True, choices=["admin", "owner", "screener"])
    c.add_argument("--owner", default="", help="owner keys: the rights holder the key acts for")
    c.add_argument("--label", default="", help="a note to recognise the key by")
    sub.add_parser("list", help="list keys (never the keys themselves)")
    r = sub.add_parser("revoke", help="revoke a key by its id")
    r.add_argument("key_id")
    for q in sub.choices.values():
        q.add_argument("--catalogue", type=Path, default=None,
                       help="catalogue directory (default $MELODYGUARD_CATALOGUE)")
        q.add_argument("--json", action="store_true")


def _cmd_keys(a: argparse.Namespace) -> int:
    from .api.keys import KeyStore
    from .config import catalogue_dir

    store = KeyStore((a.catalogue or catalogue_dir()) / "api.sqlite")
    if a.keys_action == "create":
        key, rec = store.create(role=a.role, owner=a.owner, label=a.label)
        if a.json:
            print(json.dumps({"key": key, **rec}))
        else:
            print(key)
            print(f"# key id {rec['key_id']}, role {rec['role']}" + (f", owner {rec['owner']}" if rec["owner"] else "")
                  + ". It is shown only now; store it safely.")
    elif a.keys_action == "list":
        rows = store.list()
        if a.json:
            print(json.dumps(rows))
        for r in [] if a.json else rows:
            state = f"revoked {r['revoked_at']}" if r["revoked_at"] else "active"
            print(f"{r['key_id']}  {r['role']:<8} {r['owner'] or '-':<20} {r['created_at']}  {state}  {r['label']}")
    else:
        rec = store.revoke(a.key_id)
        print(json.dumps(rec) if a.json else f"revoked {rec['key_id']} at {rec['revoked_at']}")
    return EXIT_OK


_cmd_keys.setup = _setup_keys  # type: ignore[attr-defined]
command("keys", "create, list or revoke API keys for `melodyguard serve`")(_cmd_keys)
