"""Every hllama exception, in one place.

Each class is also the builtin it naturally is (``LookupError``, ``ValueError``, ...), so callers
that only know Python's hierarchy still catch it. Front ends map classes to HTTP statuses and CLI
messages once each; nothing matches on message text.
"""

from __future__ import annotations

from pathlib import Path

from hllama.units import format_bytes


class HllamaError(Exception):
    """Base of every error hllama raises on purpose."""


def shown(text: str, limit: int = 200) -> str:
    """A name as an error message quotes it: whole, or its start where it is long (a message never echoes a
    request's kilobytes back)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ModelfileError(HllamaError, ValueError):
    """A modelfile that cannot be read or does not validate.

    ``line`` is 1-based and ``field`` is the dotted key (``parameters.temperature``) when known.
    """

    def __init__(self, message: str, *, path: Path | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = str(self.path) if self.path else "<modelfile>"
        if self.line:
            where += f":{self.line}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"

    def with_path(self, path: Path) -> ModelfileError:
        return type(self)(self.message, path=path, line=self.line, field=self.field)


class UnsupportedInstruction(ModelfileError):
    """An Ollama instruction hllama understands but cannot honour (``ADAPTER``)."""


class DuplicateAlias(ModelfileError):
    """Two modelfiles declare the same alias name."""


class InvalidAliasName(HllamaError, ValueError):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"invalid alias name {shown(name)!r}: {reason}")


class AliasNotFound(HllamaError, LookupError):
    def __init__(self, name: str, *, known: list[str] | tuple[str, ...] = ()) -> None:
        """``known``: the names there are, the closest of which a mistyped one is told of."""
        from hllama.validation import did_you_mean

        self.name = name
        super().__init__(f"model '{shown(name)}' not found{did_you_mean(name, known)}")


class ResponseNotFound(HllamaError, LookupError):
    """A stored response (``previous_response_id``, ``GET /v1/responses/{id}``) that is not there."""

    def __init__(self, response_id: str) -> None:
        super().__init__(f"response '{shown(response_id)}' not found (responses are kept when stored, for "
                         "30 days, the newest 10,000)")


class AliasExists(HllamaError, FileExistsError):
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        super().__init__(f"alias '{name}' already exists ({path})")


class BuiltinAlias(HllamaError, PermissionError):
    """An alias hllama ships (there is no modelfile to remove); a modelfile of the same name replaces it."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"'{name}' is built in: it has no modelfile to remove")


class ConfigError(HllamaError, ValueError):
    """The global configuration (config.toml or an HLLAMA_* variable) is invalid."""


class InvalidOption(HllamaError, ValueError):
    """A value given on the command line (or in a request) that does not validate."""


class UnsupportedMediaType(HllamaError, ValueError):
    """A request body that is not JSON where JSON is expected (a web page's form post, say)."""


class RequestTooLarge(HllamaError, ValueError):
    """A request body over the server's ``max_request_size``."""


class RemoteModelNotFound(HllamaError, LookupError):
    def __init__(self, repo_id: str, revision: str | None = None) -> None:
        self.repo_id = repo_id
        self.revision = revision
        what = f"revision '{revision}' of '{repo_id}'" if revision else f"model '{repo_id}'"
        super().__init__(f"{what} was not found on the Hugging Face Hub")


class GatedModel(HllamaError, PermissionError):
    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        super().__init__(f"'{repo_id}' is gated: accept its terms on the model page, then log in with "
                         "'hf auth login' (or set HF_TOKEN)")


class HubUnreachable(HllamaError, ConnectionError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"cannot reach the Hugging Face Hub ({reason})")


class UpstreamUnavailable(HllamaError, ConnectionError):
    """No engine an alias names as its upstream answers (or one failed mid-answer)."""

    def __init__(self, alias: str, reason: str) -> None:
        self.alias, self.reason = alias, reason
        super().__init__(f"the engine serving '{alias}' is unavailable: {reason}")


class ModelNotDownloaded(HllamaError, LookupError):
    """A Hub model that is not in the local cache (and was not to be pulled)."""

    def __init__(self, repo_id: str) -> None:
        self.repo_id = repo_id
        super().__init__(f"model '{repo_id}' not found, try pulling it first")


class NoModelAtPath(HllamaError, LookupError):
    """A local path that holds no model; nothing of what is there is read or shown."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no model at '{shown(path)}': expected a folder with config.json or a .gguf file")


class ModelTooLarge(HllamaError, MemoryError):
    """A model whose estimate is over the memory it may have. The message starts as Ollama's does (clients
    look for "requires more system memory"), then says what the estimate is of, whose budget it is, and
    the precision that would fit."""

    def __init__(self, model: str, needed: int, budget: int, source: str, hint: str | None = None, *,
                 detail: str = "", device: str = "cpu") -> None:
        self.model, self.needed, self.budget, self.hint = model, needed, budget, hint
        memory = "GPU memory" if device == "cuda" else "system memory"
        message = (f"model requires more {memory} ({format_bytes(needed, binary=True)}) than is available "
                   f"({format_bytes(budget, binary=True)}): the estimate for '{model}'{detail}, against {source}")
        super().__init__(message + (f"; it {hint}" if hint else ""))


class QuantizationUnavailable(HllamaError, RuntimeError):
    """8-bit/4-bit loading asked for where bitsandbytes is missing or cannot run."""


class ModelLoadError(HllamaError, RuntimeError):
    """transformers could not load the model (unsupported architecture, broken files, ...)."""


class IncompleteModel(ModelLoadError, FileNotFoundError):
    """A model whose files lack what loading it needs (a tokenizer, weights): the model's fault, not the server's."""

    def __init__(self, model: str, missing: str) -> None:
        self.model, self.missing = model, missing
        super().__init__(f"cannot load '{shown(model)}': it has no {missing}")


class PromptTooLong(HllamaError, ValueError):
    """``at_least``: ``needed`` is a bound, found without tokenizing a text too long to be worth it."""

    def __init__(self, needed: int, context: int, *, truncating: bool = True, at_least: bool = False) -> None:
        self.needed, self.context = needed, context
        how = "even with older turns dropped" if truncating else "with no turn dropped (truncate is false)"
        super().__init__(f"the prompt needs {'at least ' if at_least else ''}{needed} tokens {how}, "
                         f"but the context is {context} tokens; raise ctx (num_ctx) or shorten the message")


class ChatTemplateError(HllamaError, ValueError):
    """A chat template (the model's, an alias's or a request's) that fails to render this conversation."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the chat template failed: {reason}")


class NotSupported(HllamaError, ValueError):
    """A request asks a model for what it cannot do: tools or thinking its template has no place for,
    chat from an embedding model."""

    def __init__(self, model: str, capability: str, reason: str = "its chat template has no place for it") -> None:
        self.model, self.capability = model, capability
        super().__init__(f"{shown(model)} does not support {capability} ({reason})")


class RequestCancelled(HllamaError, RuntimeError):
    """Work stopped because the client that asked for it is gone (nobody reads the answer)."""


class ServerBusy(HllamaError, RuntimeError):
    def __init__(self, reason: str = "maximum pending requests exceeded") -> None:
        super().__init__(f"server busy, please try again. {reason}")


class CannotListen(HllamaError, OSError):
    """``serve`` cannot bind its address (not this machine's, a privileged port, ...)."""

    def __init__(self, address: str, reason: str) -> None:
        self.address = address
        super().__init__(f"cannot listen on {address}: {reason}")


class AddressInUse(CannotListen):
    """Another server (an hllama, Ollama, anything) listens where ``serve`` would."""

    def __init__(self, address: str) -> None:
        super().__init__(address, "the address is already in use, by another server (an hllama or Ollama already "
                                  "running?)")


class ServerUnreachable(HllamaError, ConnectionError):
    """A client command (``ps``, ``stop``) could not talk to ``hllama serve``, or it said no."""
