"""Finding weights and naming their identity, without loading them.

A local file or folder is identified by the SHA-256 of its content (so a retrained
checkpoint saved over the old one makes a new feature version); a hub model by its id and
the revision the config pins. Lookups never download: on the driver they only say early,
with the places they looked, that weights are missing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from itemlens.errors import ConfigError, WeightsNotFoundError

# Files in a model folder that do not change its outputs.
_IGNORED_NAMES = {"README.md", ".gitattributes", ".gitignore"}

_digest_cache: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, cached per (path, size, mtime) for this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digest_cache:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _digest_cache[key] = h.hexdigest()
    return _digest_cache[key]


def folder_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and contents of the files in a model folder, linked
    sub-folders included (a folder assembled with links, e.g. sentence-transformers' 2_Dense/,
    loads through them; ``Path.rglob`` does not descend into them)."""
    root = Path(path)
    h = hashlib.sha256()
    files, seen = [], set()
    for folder, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        files += [Path(folder) / n for n in names if (Path(folder) / n).is_file()]
    for file in sorted(files):
        rel = file.relative_to(root)
        if rel.name in _IGNORED_NAMES or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(str(rel).encode() + b"\0" + file_digest(file).encode() + b"\n")
    return h.hexdigest()


_loadable_cache: set[tuple[str, int, int]] = set()


def check_loadable(path: str | os.PathLike, what: str) -> None:
    """Open a local weights file with the loader that will load it, before any work: the
    safetensors header, or ``torch.load(weights_only=True)`` for a pickled checkpoint (memory-
    mapped: nothing is copied). A checkpoint that loader refuses (pickled objects, not just
    tensors) is a ConfigError here, not a failure inside every encoder actor later."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _loadable_cache:
        return
    try:
        if p.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(p), framework="numpy") as f:
                f.keys()
        else:
            import torch

            torch.load(str(p), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{what} {p} cannot be loaded safely: {type(exc).__name__}: {first}. itemlens loads weights "
            "without running pickled code (safetensors, or torch.load(weights_only=True)); save the state "
            "dict with safetensors (safetensors.torch.save_file) and point the spec at that file"
        ) from None
    _loadable_cache.add(key)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_cache_dir() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with every encoder extra
        return os.path.expanduser("~/.cache/huggingface/hub")


def cached_hub_file(repo_id: str, filenames: list[str], revision: str | None = None) -> str | None:
    """Path of the first of ``filenames`` in the local hub cache, or None. Never downloads."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, revision=revision)
        if isinstance(found, str):
            return found
    return None


def require_local_path(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsNotFoundError(f"{what} not found: looked for {p.resolve()} (no such file or folder)")
    return p


def missing_hub_weights(what: str, repo_id: str, filenames: list[str], revision: str | None) -> WeightsNotFoundError:
    rev = f" at revision {revision!r}" if revision else ""
    mode = "HF_HUB_OFFLINE=1, so nothing was downloaded" if hub_offline() else "the download failed"
    return WeightsNotFoundError(
        f"{what} not found: looked for {repo_id}{rev} ({' or '.join(filenames)}) in the Hugging Face "
        f"cache {hub_cache_dir()} ({mode}). Fetch the weights on a machine with hub access "
        f"(or set HF_HOME to a cache that has them), or point the spec at a local copy."
    )


class ModelFiles:
    """A model named by a spec's ``model``: a local folder, or a hub id at the spec's revision.

    One place for what the transformers-family encoders (sentence-transformers, hf-text,
    audio, caption) share: where the files are, what identifies them (a folder by its content,
    a hub model by id and revision), whether they can be seen before anything is loaded, the
    keyword arguments of ``from_pretrained``, and the error a failed load becomes.
    """

    def __init__(self, spec, what: str):
        self.model = spec.model
        self.revision = spec.revision
        self.trust_remote_code = spec.trust_remote_code
        self.what = what  # e.g. "hf-text model": how messages name it

    def folder(self) -> Path | None:
        """The local folder, or None for a hub id; a path that does not exist is an error."""
        path = Path(self.model).expanduser()
        if path.is_dir():
            return path
        if self.model.startswith((".", "/", "~")) or self.model.count("/") > 1:
            raise WeightsNotFoundError(f"{self.what} folder not found: looked for {path.resolve()}")
        return None

    @property
    def source(self) -> str:
        """What ``from_pretrained`` is given."""
        folder = self.folder()
        return str(folder) if folder is not None else self.model

    def identity(self) -> str:
        folder = self.folder()
        if folder is not None:
            return f"folder-sha256:{folder_digest(folder)}"
        return f"hf:{self.model}@{self.revision or 'main'}"

    def options(self) -> dict:
        """``from_pretrained`` keyword arguments: revision, remote code, offline."""
        return {
            "revision": self.revision,
            "trust_remote_code": self.trust_remote_code,
            "local_files_only": hub_offline(),
        }

    def require(
        self,
        *groups: Sequence[str],
        hub_groups: Sequence[Sequence[str]] | None = None,
        kind: str = "transformers model",
    ) -> None:
        """Raise WeightsNotFoundError unless every group has one of its files: in the folder,
        or (offline) in the hub cache (``hub_groups``, default the same). Never downloads."""
        folder = self.folder()
        if folder is not None:
            missing = [" or ".join(g) for g in groups if not any((folder / name).is_file() for name in g)]
            if missing:
                raise WeightsNotFoundError(
                    f"{folder.resolve()} is not a complete {kind} folder: missing {', '.join(missing)}"
                )
        elif hub_offline():
            for names in groups if hub_groups is None else hub_groups:
                if cached_hub_file(self.model, list(names), self.revision) is None:
                    error = missing_hub_weights(f"{self.what} {self.model!r}", self.model, list(names), self.revision)
                    raise WeightsNotFoundError(
                        f"{error} (There is no local folder {Path(self.model).resolve()} either.)"
                    )

    def load_error(self, exc: Exception, names: Sequence[str]) -> WeightsNotFoundError:
        """What a failed ``from_pretrained`` becomes: where it looked."""
        if self.folder() is None:
            return missing_hub_weights(f"{self.what} {self.model!r}", self.model, list(names), self.revision)
        return WeightsNotFoundError(f"cannot load {self.what} from {self.folder()}: {exc}")
