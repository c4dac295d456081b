"""JSON schemas as the grammars take them: closed to properties they do not list, checked for what llguidance
can enforce, and a tool's parameters relaxed to what it can."""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

from hllama.errors import InvalidOption

log = logging.getLogger("hllama.engine.grammar")


#: What JSON mode asks for.
OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


#: How llguidance names the keywords of a schema it cannot enforce.
_UNIMPLEMENTED = re.compile(r"Unimplemented keys: (\[[^\]]*\])")


#: Where a schema's keys are names (of properties, of definitions), not keywords.
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


@functools.lru_cache(maxsize=256)
def enforceable_parameters(name: str, parameters_text: str) -> str:
    """A tool's parameters (closed, as every schema here) as far as they can be enforced: keywords llguidance does
    not implement (``propertyNames``, ``not``...) are left out, so the rest still holds, and the log says so once
    per schema; parameters it cannot enforce at all become any object. The other tools keep their grammar."""
    from llguidance import LLMatcher

    schema, dropped = closed(json.loads(parameters_text)), []
    for _ in range(8):
        try:
            problem = LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema(schema, defaults=OPTIONS))
        except ValueError as exc:
            problem = str(exc)
        found = _UNIMPLEMENTED.search(problem or "")
        if not problem or found is None:
            break
        keys = set(json.loads(found.group(1)))
        dropped += sorted(keys)
        schema = _without(schema, keys)
    if problem:
        log.warning("tool %s: its parameters cannot be enforced (%s); its calls may hold any object", name,
                    problem.strip().splitlines()[0])
        return json.dumps({"type": "object"})
    if dropped:
        log.warning("tool %s: %s in its parameters cannot be enforced and go unchecked; the rest is enforced", name,
                    ", ".join(dropped))
    return json.dumps(schema, ensure_ascii=False)


def _without(schema: Any, keys: set[str]) -> Any:
    """``schema`` without the keywords ``keys``, wherever they stand as keywords."""
    if isinstance(schema, list):
        return [_without(item, keys) for item in schema]
    if not isinstance(schema, dict):
        return schema
    return {key: ({name: _without(value, keys) for name, value in item.items()} if key in _NAMED
                  and isinstance(item, dict) else _without(item, keys))
            for key, item in schema.items() if key not in keys}


def enforceable(grammar: str, what: str) -> str:
    """``grammar``, once llguidance finds nothing in it that it cannot enforce; else an :class:`InvalidOption`
    saying ``what`` and the first problem."""
    from llguidance import LLMatcher

    if problem := LLMatcher.validate_grammar(grammar):
        raise InvalidOption(f"{what} cannot be enforced: {problem.strip().splitlines()[0]}")
    return grammar


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others, unless it says otherwise."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    shut = {key: closed(value) for key, value in schema.items()}
    if "properties" in shut and "additionalProperties" not in shut:
        shut["additionalProperties"] = False
    return shut
