"""`rnnlm models list|promote|rollback`: model versions on a checkpoint folder (see models/versions.py).

A server watching the same folder serves the change on its next scan; these commands take the same
lock as the worker and the API, so they may run beside them.
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

from models import versions
from models.checkpoint import CONFIG


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, parser_class=type(p))
    a = sub.add_parser("list", help="the versions of a model (of every model without NAME)")
    a.add_argument("name", nargs="?", default=None, help="model name (its folder in --checkpoints)")
    a.add_argument("--json", action="store_true", help="one JSON object per version")
    a = sub.add_parser("promote", help="serve a version if it passes the promotion gate (or with --force)")
    a.add_argument("name")
    a.add_argument("version", type=int)
    a.add_argument("--force", action="store_true", help="serve it even if the gate refuses it")
    a = sub.add_parser("rollback", help="serve the version served before the current one (or --to VERSION)")
    a.add_argument("name")
    a.add_argument("--to", type=int, default=None, metavar="VERSION")
    for a in sub.choices.values():
        a.add_argument("--checkpoints", default="checkpoints", help="folder of model folders (default: checkpoints)")


def _row(v: versions.Version, current: int) -> dict:
    gate = v.record.get("gate") or {}
    return {"version": v.number, "current": v.number == current, "valid_ppl": v.valid_ppl, "test_ppl": v.test_ppl,
            "created": datetime.fromtimestamp(v.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "source": v.record.get("source") or {}, "promoted": gate.get("promoted", True),
            "reason": gate.get("reason")}


def _print_table(name: str, rows: list[dict]) -> None:
    print(f"{name}:")
    print(f"  {'version':>7}  {'current':<7}  {'valid_ppl':>9}  {'test_ppl':>9}  {'created (UTC)':<19}  "
          f"{'source':<14}  gate")
    for r in rows:
        source = r["source"]
        job = f"{source.get('type', 'job')} {str(source['job'])[:8]}" if source.get("job") else "-"
        ppl = [f"{x:9.2f}" if x is not None else f"{'-':>9}" for x in (r["valid_ppl"], r["test_ppl"])]
        gate = r["reason"] if r["promoted"] or not r["reason"] else f"not promoted: {r['reason']}"
        print(f"  {r['version']:>7}  {'*' if r['current'] else '':<7}  {ppl[0]}  {ppl[1]}  {r['created']:<19}  "
              f"{job:<14}  {gate or '-'}")


def run(args: argparse.Namespace) -> int:
    root = Path(args.checkpoints)
    if args.action == "list":
        names = [args.name] if args.name else sorted(p.name for p in root.iterdir()
                                                     if not p.name.startswith(".") and (p / CONFIG).is_file())
        for name in names:
            folder = root / name
            current = versions.current_version(folder)
            rows = [_row(v, current) for v in versions.list_versions(folder)]
            if args.json:
                for row in rows:
                    print(json.dumps({"model": name, **row}))
            else:
                _print_table(name, rows)
        return 0
    if args.action == "promote":
        decision = versions.promote(root / args.name, args.version, force=args.force)
        print(f"{args.name}: version {args.version} is current ({decision.reason})")
        return 0
    number = versions.rollback(root / args.name, args.to)
    print(f"{args.name}: rolled back to version {number}")
    return 0
