"""``hllama logs``: the answers the request log kept (``log_requests``), newest first."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime

from hllama.errors import InvalidOption

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("logs", help="show the request log", description="The answers kept in the "
                                 "request log (turn it on with log_requests = true), newest first.")
    parser.add_argument("-n", "--count", type=int, default=10, help="how many entries (default 10)")
    parser.add_argument("--model", help="only this alias or model")
    parser.add_argument("--since", help="only entries since a time ago (30m, 2h, 7d) or a date (2026-11-26)")
    parser.add_argument("--search", metavar="TEXT", help="full-text search of prompts and answers")
    parser.add_argument("--json", action="store_true", help="as JSON, every field")
    parser.add_argument("--clear", action="store_true", help="delete every entry (asks first)")
    parser.add_argument("-y", "--yes", action="store_true", help="with --clear: do not ask")
    parser.set_defaults(run=run_logs)


def run_logs(args: argparse.Namespace) -> int:
    from hllama.config import load_settings
    from hllama.runtime.requestlog import clear, read

    path = load_settings().home / "logs.db"
    if args.clear:
        if not args.yes and input(f"Delete every entry of {path}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing deleted.")
            return 1
        print(f"Deleted {clear(path)} entries.")
        return 0
    if args.count < 1:
        raise InvalidOption("-n: at least 1")
    entries = read(path, limit=args.count, model=args.model, since=_since(args.since) if args.since else None,
                   search=args.search)
    if args.json:
        json.dump(entries, sys.stdout, ensure_ascii=False, indent=2)
        print()
        return 0
    for entry in entries:
        when = datetime.fromtimestamp(entry["created_at"]).isoformat(sep=" ", timespec="seconds")
        asked = next((message.get("content") for message in reversed(entry["messages"])
                      if message.get("role") == "user"), "")
        print(f"{when}  {entry['alias'] or entry['model']}  {entry['client']}  {entry['generated_tokens']} tokens, "
              f"{entry['duration_ms'] / 1000:.2f} s, {entry['done_reason']}")
        print(f"  > {_one_line(asked)}")
        print(f"  < {_one_line(entry['response'])}")
    if not entries and not path.is_file():
        print("The request log is empty (turn it on with log_requests = true, or HLLAMA_LOG_REQUESTS=1).")
    return 0


def _since(text: str) -> float:
    if match := _DURATION.match(text.strip()):
        return time.time() - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise InvalidOption(f"--since: use a time ago (30m, 2h, 7d) or a date (2026-11-26), not {text!r}") from None


def _one_line(text: object, width: int = 100) -> str:
    flat = " ".join(str(text if isinstance(text, str) else json.dumps(text)).split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"
