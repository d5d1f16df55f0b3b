"""``anet-lite verify`` and ``anet-lite tombstones``: a tombstone log's chain and records."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ._common import EXIT_ALERT, EXIT_OK, EXIT_USAGE
from ._common import err as _err

_VERIFY_EPILOG = """examples:
  anet-lite verify run.anet/tombstones.jsonl
  anet-lite verify tombstones.jsonl --head sha256:3f2a...   # also detects a cut-off tail
  ANET_KEY=secret anet-lite verify tombstones.jsonl --key-env ANET_KEY

Without --key-env, an HMAC key is read from ANET_TOMBSTONE_KEY when set.

exit codes:
  0  the chain is intact
  1  the chain is broken (the first bad line and what is wrong are printed)
  2  usage error (no such file, key variable not set)
"""


# ---- verify -------------------------------------------------------------------------------


__all__ = [
    "add_tombstones_parser",
    "add_verify_parser",
    "cmd_tombstones",
    "cmd_verify",
]


def _tombstone_file_and_key(args: argparse.Namespace) -> Optional[Tuple[Path, Optional[str]]]:
    """FILE and the HMAC key from ``--key-env`` (None after printing a usage error)."""
    p = Path(args.file)
    if not p.is_file():
        _err(f"{p}: {'not a regular file' if p.exists() else 'no such file'}")
        return None
    key = None
    if args.key_env:
        key = os.environ.get(args.key_env)
        if not key:
            _err(f"--key-env {args.key_env}: the environment variable is not set or empty")
            return None
    return p, key


def cmd_verify(args: argparse.Namespace) -> int:
    from ..records.tombstone import verify
    from ..report.words import count

    got = _tombstone_file_and_key(args)
    if got is None:
        return EXIT_USAGE
    p, key = got
    try:
        res = verify(p, head=args.head, key=key)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    code = EXIT_OK if res.ok else EXIT_ALERT
    if args.json:
        d = {
            "ok": res.ok,
            "file": str(p),
            "records": res.records,
            "head": res.head,
            "line": res.line,
            "reason": res.reason,
        }
        _print(json.dumps(d, ensure_ascii=False))
    elif res.ok:
        _print(f"ok: {count(res.records, 'record')}, head {res.head}")
    else:
        where = f"line {res.line}: " if res.line is not None and "line" not in res.reason else ""
        _print(f"BROKEN: {p}: {where}{res.reason}")
        _print(f"  {count(res.records, 'record')} verified before it; last good hash {res.head}")
    return code


# ---- tombstones ---------------------------------------------------------------------------

_TOMBSTONES_EPILOG = """examples:
  anet-lite tombstones run.anet/tombstones.jsonl
  anet-lite tombstones tombstones.jsonl --event forget --policy compliance --lang ja
  anet-lite tombstones tombstones.jsonl --json > tombstones.json

Prints one row per record (time, event, policy, scope, key evidence, short hash), then
the hash chain's status (as `anet-lite verify`). --event/--policy filter the rows only;
the chain is always checked whole. An HMAC key is read from ANET_TOMBSTONE_KEY when set.

exit codes:
  0  the chain is intact
  1  the chain is broken
  2  usage error (no such file, key variable not set)
"""


def add_tombstones_parser(sub: Any, fmt: Any) -> None:
    t = sub.add_parser(
        "tombstones",
        help="show a tombstone log as a table (and check its chain)",
        description="Show the records of a tombstone log as a readable table, with the "
        "hash chain's status at the end.",
        epilog=_TOMBSTONES_EPILOG,
        formatter_class=fmt,
    )
    t.add_argument("file", metavar="FILE")
    t.add_argument("--event", metavar="E", help="only records with this event (e.g. forget)")
    t.add_argument("--policy", metavar="P", help="only records with this policy (e.g. ttl)")
    t.add_argument("--lang", default="en", choices=("en", "ja"), help="header language")
    t.add_argument(
        "--key-env", metavar="VAR", help="read the HMAC key from environment variable VAR"
    )
    t.add_argument("--json", action="store_true", help="print records and chain status as JSON")
    t.set_defaults(func=cmd_tombstones)


def _read_tombstone_lines(p: Path) -> List[Dict[str, Any]]:
    """Every parseable record of ``p``; unreadable lines become placeholder rows."""
    from ..records.tombstone import read_lines

    return [
        rec if rec is not None else {"event": f"(line {no}: unreadable)", "_line": no}
        for no, rec in read_lines(p)
    ]


def _print(text: str) -> None:
    """print() that survives lone surrogates from a damaged file (shown escaped)."""
    print(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def cmd_tombstones(args: argparse.Namespace) -> int:
    from ..records.forgetting import format_table
    from ..records.tombstone import verify
    from ..report.words import count

    got = _tombstone_file_and_key(args)
    if got is None:
        return EXIT_USAGE
    p, key = got
    try:
        res = verify(p, key=key)
        recs = _read_tombstone_lines(p)
    except (TypeError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"{p}: {e.strerror or e}")
        return EXIT_USAGE
    shown = [
        r
        for r in recs
        if (args.event is None or r.get("event") == args.event)
        and (args.policy is None or r.get("policy") == args.policy)
    ]
    code = EXIT_OK if res.ok else EXIT_ALERT
    chain = {
        "ok": res.ok,
        "records": res.records,
        "head": res.head,
        "line": res.line,
        "reason": res.reason,
    }
    if args.json:
        d = {"file": str(p), "total": len(recs), "shown": len(shown), "records": shown}
        d["chain"] = chain
        _print(json.dumps(d, ensure_ascii=False))
        return code
    ja = args.lang == "ja"
    if shown:
        _print(format_table(shown, lang=args.lang))
    elif recs:
        total = len(recs)
        _print(f"(該当なし: 全 {total} 件)" if ja else f"(no matching records; {total} in all)")
    else:
        _print("(記録なし)" if ja else "(no records)")
    if ja:
        n = f"{len(shown)} / {len(recs)} 件を表示"
        status = f"チェーン: 正常 ({res.records} 件)" if res.ok else f"チェーン: 破損: {res.reason}"
    else:
        n = f"{len(shown)} of {count(len(recs), 'record')} shown"
        status = (
            f"chain: ok ({count(res.records, 'record')})"
            if res.ok
            else f"chain: BROKEN: {res.reason}"
        )
    _print(f"{n}\n{status}")
    if not res.ok:
        if ja:
            _print(f"  {res.records} 件は正常、最後の正しいハッシュ {res.head}")
        else:
            _print(
                f"  {count(res.records, 'record')} verified before it; last good hash {res.head}"
            )
    return code


def add_verify_parser(sub: Any, fmt: Any) -> None:
    v = sub.add_parser(
        "verify",
        help="check a tombstone log's hash chain",
        description="Verify a tombstone log (hash chain, optional HMAC key and head hash).",
        epilog=_VERIFY_EPILOG,
        formatter_class=fmt,
    )
    v.add_argument("file", metavar="FILE")
    v.add_argument("--head", metavar="HASH", help="the last hash, kept elsewhere")
    v.add_argument(
        "--key-env", metavar="VAR", help="read the HMAC key from environment variable VAR"
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_verify)
