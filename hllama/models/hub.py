"""Models on disk and on the Hub: pull, look before pulling, scan and clear the cache.

Everything goes through ``huggingface_hub`` (its cache layout, progress bars and endpoint
settings such as ``HF_ENDPOINT``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE``); this module only
decides which files a transformers model needs and turns the Hub's errors into hllama's.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hllama.errors import GatedModel, HubUnreachable, InvalidOption, RemoteModelNotFound
from hllama.models.footprint import Footprint, footprint_from_tensors

#: Small files transformers may read next to the weights.
_SUPPORT_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "*.py")


@dataclass(frozen=True)
class RemoteModel:
    """A model on the Hub, as far as its metadata tells, before anything big is downloaded."""

    repo_id: str
    ref: str  # what was asked for (a branch, tag or commit): the cache records it
    revision: str  # the commit it pointed to
    files: dict[str, int]  # the files a pull downloads, with their sizes
    footprint: Footprint

    @property
    def download_bytes(self) -> int:
        return sum(self.files.values())


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    revisions: tuple[str, ...]
    refs: tuple[str, ...]
    size_on_disk: int
    last_used: float
    snapshot: Path


def select_files(sizes: dict[str, int]) -> dict[str, int]:
    """What transformers needs: config, tokenizer, and one copy of the weights.

    Safetensors when there are any, ``.bin`` only otherwise; top-level files only, which leaves
    out the GGUF, ONNX, TF, Flax and ``original/`` duplicates many repos carry.
    """
    top = {name: size for name, size in sizes.items() if "/" not in name}
    safetensors = {name: size for name, size in top.items() if name.endswith(".safetensors")}
    weights = safetensors or {name: size for name, size in top.items() if name.endswith(".bin")}
    support = {name: size for name, size in top.items()
               if any(fnmatch.fnmatch(name, pattern) for pattern in _SUPPORT_FILES)
               and not (safetensors and name.endswith(".bin.index.json"))}
    return dict(sorted({**support, **weights}.items()))


def inspect_remote(repo_id: str, *, revision: str | None = None) -> RemoteModel:
    """Sizes, parameter count and config from the Hub, reading safetensors headers with ranges."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=endpoint())
    with hub_errors(repo_id, revision):
        info = api.repo_info(repo_id, revision=revision)
        sizes = {item.path: item.size for item in api.list_repo_tree(repo_id, revision=info.sha, recursive=True)
                 if isinstance(item, RepoFile)}
        files = select_files(sizes)
        config = {}
        if "config.json" in files:  # read outside the cache: a pull that stops here must leave no trace
            with tempfile.TemporaryDirectory() as scratch:
                path = hf_hub_download(repo_id, "config.json", revision=info.sha, local_dir=scratch,
                                       endpoint=endpoint())
                config = json.loads(Path(path).read_text(encoding="utf-8"))
        weights = {name: size for name, size in files.items() if name.endswith((".safetensors", ".bin"))}
        if any(name.endswith(".safetensors") for name in weights):
            metadata = api.get_safetensors_metadata(repo_id, revision=info.sha)
            tensors = [(name, tensor.dtype, tensor.shape) for file in metadata.files_metadata.values()
                       for name, tensor in file.tensors.items()]
            footprint = footprint_from_tensors(tensors, files_bytes=sum(weights.values()), config=config)
        else:
            footprint = Footprint(files_bytes=sum(weights.values()), config=config)
    return RemoteModel(repo_id=repo_id, ref=revision or "main", revision=info.sha, files=files, footprint=footprint)


def download(remote: RemoteModel) -> Path:
    """Fetch the selected files into the Hub cache, with huggingface_hub's progress bars."""
    from huggingface_hub import snapshot_download

    with hub_errors(remote.repo_id, remote.revision):
        return Path(snapshot_download(remote.repo_id, revision=remote.ref, allow_patterns=list(remote.files),
                                      cache_dir=cache_dir(), endpoint=endpoint()))


def download_file(remote: RemoteModel, filename: str, *, stop: threading.Event,
                  every: float = 0.1) -> Iterator[int]:
    """Fetch one file into the Hub cache, yielding how many of its bytes are down (at most every ``every`` s).

    The download runs in a worker thread and reports through huggingface_hub's own progress hook, so
    plain HTTP and Xet downloads are measured alike. Setting ``stop`` aborts it at the next chunk;
    huggingface_hub then deletes the partial file.
    """
    from huggingface_hub import hf_hub_download

    done = [0]

    def heard(total: int) -> None:
        if stop.is_set():
            raise DownloadStopped
        done[0] = total

    def fetch() -> None:
        with hub_errors(remote.repo_id, remote.ref):
            hf_hub_download(remote.repo_id, filename, revision=remote.ref, cache_dir=cache_dir(),
                            endpoint=endpoint(), tqdm_class=_progress_hook(heard))

    with ThreadPoolExecutor(1, thread_name_prefix="hllama-download") as pool:
        future = pool.submit(fetch)
        told = -1
        while not wait([future], timeout=every).done:
            if done[0] != told and not stop.is_set():
                told = done[0]
                yield told
        try:
            future.result()
        except DownloadStopped:
            return
    yield remote.files.get(filename, done[0])


class DownloadStopped(Exception):
    """Raised inside the download thread to abort it."""


def _progress_hook(heard: Callable[[int], None]) -> type:
    """A silent progress bar class for huggingface_hub that passes on the bytes downloaded so far."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class Progress(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self.downloaded = int(kwargs.get("initial") or 0)  # a resumed download starts part way
            heard(self.downloaded)

        def update(self, n: float | None = 1) -> bool | None:
            self.downloaded += int(n or 0)
            heard(self.downloaded)
            return super().update(n)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes of a Xet download; ``update`` already counts the file's bytes."""

    return Progress


def cache_dir() -> Path:
    """The Hub cache, read from the environment at each call (huggingface_hub reads it once, at import)."""
    if folder := os.environ.get("HF_HUB_CACHE"):
        return Path(folder).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def local_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot of ``repo_id`` at ``revision`` (a ref or a commit), if it has a config and weights."""
    repo = cache_dir() / ("models--" + repo_id.replace("/", "--"))
    ref = revision or "main"
    try:
        commit = (repo / "refs" / ref).read_text().strip() if (repo / "refs" / ref).is_file() else ref
        snapshot = repo / "snapshots" / commit
        weights = any(snapshot.glob("*.safetensors")) or any(snapshot.glob("*.bin"))
        complete = ((snapshot / "config.json").is_file() and weights and _all_shards(snapshot)) or \
            any(snapshot.glob("*.gguf"))
    except (OSError, ValueError):  # a name no file can have (too long, a NUL): nothing cached under it
        return None
    return snapshot if complete else None


def store_snapshot(repo_id: str, revision: str, build: Callable[[Path], None]) -> Path:
    """A snapshot made on this machine (a converted model) rather than downloaded, laid into the Hub cache as a
    download is: ``snapshots/<revision>`` and ``refs/main``. ``build`` fills a scratch folder beside it, which is
    renamed into place whole, so a build that fails or is killed leaves no snapshot (and the next build sweeps a
    killed one's scratch away). Processes making the same one wait for each other, and the later finds it made."""
    from filelock import FileLock

    from hllama.fsutil import atomic_write_text

    repo = cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    locks = cache_dir() / ".locks" / repo.name
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{revision}.build.lock")):
        for left in repo.glob(f".building-{revision}-*"):  # a builder that was killed (Ctrl+C) left it
            shutil.rmtree(left, ignore_errors=True)
        if local_snapshot(repo_id, revision) is None:
            snapshot.parent.mkdir(parents=True, exist_ok=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".building-{revision}-", dir=repo))
            try:
                build(scratch)
                _shared(scratch)
                if snapshot.exists():  # what an older, interrupted way of building left
                    shutil.rmtree(snapshot)
                os.replace(scratch, snapshot)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        atomic_write_text(repo / "refs" / "main", revision)
        _shared(repo / "refs" / "main")
    return snapshot


def _shared(path: Path) -> None:
    """Readable as what huggingface_hub downloads is (its permissions by the umask), not private to this user as
    a temporary folder or file is made."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())


def _umask() -> int:
    """The process's umask, read rather than set (setting it to read it would race with other threads' files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def _all_shards(snapshot: Path) -> bool:
    """Every weight file a sharded checkpoint's index names is there (an interrupted pull leaves some out)."""
    for index in [*snapshot.glob("*.safetensors.index.json"), *snapshot.glob("*.bin.index.json")]:
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        if not all((snapshot / str(shard)).is_file() for shard in shards):
            return False
    return True


def cached_models() -> list[CachedModel]:
    from huggingface_hub import scan_cache_dir

    folder = cache_dir()
    if not folder.is_dir():
        return []
    models = []
    for repo in scan_cache_dir(folder).repos:
        if repo.repo_type != "model" or not repo.revisions:
            continue
        newest = max(repo.revisions, key=lambda revision: revision.last_modified)
        main = next((revision for revision in repo.revisions if "main" in revision.refs), newest)
        models.append(CachedModel(
            repo_id=repo.repo_id, revisions=tuple(sorted(revision.commit_hash for revision in repo.revisions)),
            refs=tuple(sorted(ref for revision in repo.revisions for ref in revision.refs)),
            size_on_disk=repo.size_on_disk, last_used=repo.last_accessed, snapshot=main.snapshot_path))
    return sorted(models, key=lambda model: model.repo_id)


def clear_cache(repo_ids: list[str]) -> int:
    """Delete every revision of ``repo_ids`` through huggingface_hub; returns the bytes freed."""
    from huggingface_hub import scan_cache_dir

    if not cache_dir().is_dir():
        return 0
    info = scan_cache_dir(cache_dir())
    wanted = set(repo_ids)
    hashes = [revision.commit_hash for repo in info.repos if repo.repo_id in wanted for revision in repo.revisions]
    if not hashes:
        return 0
    strategy = info.delete_revisions(*hashes)
    strategy.execute()
    return strategy.expected_freed_size


def ago(timestamp: float) -> str:
    """``3 minutes ago``, the way ``ollama list`` says when."""
    seconds = max(0, time.time() - timestamp)
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now"


@contextmanager
def hub_errors(repo_id: str, revision: str | None) -> Iterator[None]:
    """The Hub client's exceptions as hllama's, each with a message a user can act on."""
    import httpx2
    from huggingface_hub import errors

    try:
        yield
    except errors.HFValidationError:
        raise InvalidOption(f"invalid model name '{repo_id[:200]}': a Hub repo id is owner/name") from None
    except errors.GatedRepoError:
        raise GatedModel(repo_id) from None
    except errors.RevisionNotFoundError:
        raise RemoteModelNotFound(repo_id, revision) from None
    except (errors.RepositoryNotFoundError, errors.RemoteEntryNotFoundError):
        raise RemoteModelNotFound(repo_id) from None
    except errors.OfflineModeIsEnabled:
        raise HubUnreachable("HF_HUB_OFFLINE is set") from None
    except (httpx2.HTTPError, errors.HfHubHTTPError, errors.LocalEntryNotFoundError) as exc:
        raise HubUnreachable(str(exc).splitlines()[0]) from None
