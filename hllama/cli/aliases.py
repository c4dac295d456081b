"""``create``, ``list``, ``show`` and ``rm``: the alias commands. None of them loads a model."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hllama.aliases.modelfile import Modelfile, dump_yaml
from hllama.aliases.registry import Registry
from hllama.aliases.resolve import Resolved, resolve
from hllama.aliases.store import AliasStore
from hllama.cli.args import add_generation_options, add_load_options, invalid_option, overrides_from_args
from hllama.cli.models import plan_lines
from hllama.cli.table import format_table
from hllama.config import Settings, load_settings
from hllama.errors import InvalidOption, ModelNotDownloaded, NoModelAtPath
from hllama.models.hardware import memory_budget
from hllama.names import is_local_path, is_model_path
from hllama.runtime.catalog import plan_for


def register(commands: argparse._SubParsersAction) -> None:
    create = commands.add_parser(
        "create", help="create an alias from flags or a modelfile",
        description="Create an alias: from flags (--alias NAME --model ID [options]) or from a modelfile "
                    "(-f FILE) in YAML, TOML or Ollama's Modelfile syntax.")
    create.add_argument("name", nargs="?", help="alias name (same as --alias)")
    create.add_argument("--alias", metavar="NAME", help="alias name")
    create.add_argument("-f", "--file", metavar="FILE", type=Path, help="install this modelfile")
    create.add_argument("--model", metavar="ID", help="Hub repo id, local model folder or .gguf file")
    create.add_argument("--revision", metavar="REV", help="branch, tag or commit on the Hub")
    create.add_argument("--description", metavar="TEXT", help="one line about the alias")
    create.add_argument("--force", action="store_true", help="replace an existing alias")
    add_generation_options(create)
    add_load_options(create)
    create.set_defaults(run=run_create)

    show = commands.add_parser("show", help="show an alias or a model")
    show.add_argument("name", help="alias, Hub repo id or local model")
    view = show.add_mutually_exclusive_group()
    view.add_argument("--explain", action="store_true", help="every effective value and the layer that set it")
    view.add_argument("--modelfile", action="store_true", help="print the source file as written")
    show.set_defaults(run=run_show)

    remove = commands.add_parser("rm", help="remove aliases")
    remove.add_argument("names", nargs="+", metavar="NAME")
    remove.set_defaults(run=run_rm)


def run_create(args: argparse.Namespace) -> int:
    store = AliasStore(load_settings())
    if args.name and args.alias and args.name != args.alias:
        raise InvalidOption(f"two names given: '{args.name}' and --alias '{args.alias}'")
    name = args.alias or args.name
    overrides = overrides_from_args(args)
    if args.file is not None:
        if args.model or overrides.model_dump(exclude_defaults=True) or args.revision or args.description:
            raise InvalidOption("-f takes its settings from the file; give either -f FILE or --model and flags")
        entry = store.install(args.file, name=name, force=args.force)
    else:
        if not name or not args.model:
            raise InvalidOption("create needs --alias NAME and --model ID, or -f FILE")
        entry = store.create(name, _modelfile_from_flags(args, overrides), force=args.force)
    print(f"created '{entry.name}' ({entry.path})")
    return 0


def _modelfile_from_flags(args: argparse.Namespace, overrides: Any) -> Modelfile:
    data = {"from": args.model, "revision": args.revision, "description": args.description,
            **overrides.model_dump(exclude_none=True)}
    try:
        modelfile = Modelfile.model_validate(data)
    except ValidationError as exc:
        raise invalid_option(exc, schema=Modelfile) from None
    modelfile = modelfile.with_local_path_from(Path.cwd())  # a path typed on the command line is relative to here
    if is_local_path(args.model) and not is_model_path(modelfile.from_):
        raise NoModelAtPath(args.model)
    return modelfile


def run_show(args: argparse.Namespace) -> int:
    settings = load_settings()
    registry = AliasStore(settings).refresh()
    if args.explain:
        resolved = resolve(args.name, settings=settings, registry=registry)
        rows = [(key, _value_text(value), layer.value if layer else "unset")
                for key, value, layer in resolved.explain()]
        print(format_table(("SETTING", "VALUE", "FROM"), rows, max_width=60))
        _print_plan(resolved, settings)
        return 0
    entry = registry.get(args.name)
    if entry is None:
        return _show_model(args.name, settings, registry)
    if args.modelfile:  # a built-in alias has no file: what it holds, as one
        print(dump_yaml(entry.modelfile) if entry.builtin else entry.path.read_text(encoding="utf-8-sig"), end="")
        return 0
    if entry.error is not None:
        print(f"# {entry.error}\n# showing the last good version")
    print(dump_yaml(entry.modelfile.model_copy(update={"name": entry.name})), end="")
    _print_plan(resolve(entry.name, settings=settings, registry=registry), settings)
    return 0


def _show_model(name: str, settings: Settings, registry: Registry) -> int:
    """A model that is no alias (a cached Hub repo, a local folder), as ``ollama show`` prints one."""
    from hllama.runtime.modelinfo import describe_model

    resolved = resolve(name, settings=settings, registry=registry)
    described = describe_model(resolved, memory_budget(settings))
    if described.plan is None:
        raise ModelNotDownloaded(resolved.model)
    info, details = described.model_info, described.details
    arch = info.get("general.architecture", "")
    rows = [("architecture", arch), ("parameters", details["parameter_size"]),
            ("context length", info.get(f"{arch}.context_length")),
            ("embedding length", info.get(f"{arch}.embedding_length")),
            ("quantization", details["quantization_level"]),
            ("runs at", info.get("hllama.precision") if details["format"] == "gguf" else None),  # dequantized
            ("format", details["format"])]
    sections = [("Model", [(key, value) for key, value in rows if value not in (None, "")]),
                ("Capabilities", [(capability, "") for capability in described.capabilities]),
                ("Parameters", [(key, json.dumps(item, ensure_ascii=False))
                                for key, value in described.parameters.items()
                                for item in (value if isinstance(value, list) else [value])])]
    for title, lines in sections:
        if lines:
            print(f"  {title}")
            for key, value in lines:
                print(f"    {key:<20}{value}".rstrip())
            print()
    return 0


def _print_plan(resolved: Resolved, settings: Settings) -> None:
    """What loading would take, as comments so the YAML above stays valid."""
    load_plan = plan_for(resolved, memory_budget(settings))
    lines = plan_lines(load_plan) if load_plan else [f"not downloaded yet: hllama pull {resolved.model}"]
    for line in lines:
        print(f"# {line}")


def _value_text(value: Any) -> str:
    return "-" if value is None else json.dumps(value, ensure_ascii=False)


def run_rm(args: argparse.Namespace) -> int:
    for name in AliasStore(load_settings()).remove(args.names):
        print(f"deleted '{name}'")
    return 0
