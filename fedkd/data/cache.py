"""An on-disk cache of prepared arrays, shared by every process of the machine.

Every simulation worker, the ServerApp and the runner load the same dataset and the same
partition. Without this cache each process decompresses and converts Fashion-MNIST (220 MB of
float32 per process) and imports Hugging Face ``datasets`` to partition it. With it, the first
process to need an entry writes it once, as ``.npy`` files, and every process after that maps
the files read-only (``numpy.load(mmap_mode="r")``): loading is almost free and the pages are
shared through the OS page cache instead of copied into each process.

Entries are keyed by a hash of everything they depend on (source files' paths, sizes and
modification times, the split's parameters, the labels, library versions) and written
atomically (a temporary folder renamed into place), so concurrent processes never see half an
entry and a stale entry is never reused. Nothing is written per message.

Location: ``$FEDKD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fedkd``, else ``~/.cache/fedkd``.
``FEDKD_CACHE_DIR=off`` turns the cache off (everything is then computed in memory, as before).
A cache folder that cannot be written or read is skipped, with the same result, and a WARNING
names the cause (the cost: every process builds the arrays again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["CACHE_ENV", "CACHE_VERSION", "cache_dir", "cache_key", "cached_arrays", "file_stamp"]

_log = logging.getLogger(__name__)

#: Environment variable naming the cache folder (``off`` disables the cache).
CACHE_ENV = "FEDKD_CACHE_DIR"
#: Bumped whenever the layout or the content of an entry changes.
CACHE_VERSION = 1


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when the cache is off."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in ("", "0", "off", "false", "no") else Path(value)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fedkd"


def file_stamp(path: Path) -> list[object]:
    """What identifies a source file's content cheaply: resolved path, size, mtime (ns)."""
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(kind: str, *parts: object) -> str:
    """A folder name for an entry: ``<kind>-<sha256 of the parts>``."""
    text = json.dumps([CACHE_VERSION, kind, *parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def _load(folder: Path, names: list[str], mmap: bool) -> dict[str, np.ndarray] | None:
    """The entry's arrays, or ``None`` (with a WARNING naming the cause) if it cannot be read."""
    try:
        arrays = {n: np.load(folder / f"{n}.npy", mmap_mode="r" if mmap else None,
                             allow_pickle=False) for n in names}
    except (OSError, ValueError) as err:
        _log.warning("cache entry %s cannot be read (%s: %s): it is not used",
                     folder, type(err).__name__, err)
        return None
    for a in arrays.values():
        if a.flags.writeable:
            a.setflags(write=False)
    return arrays


def _save(folder: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` into ``folder`` atomically; a concurrent writer's complete entry wins
    quietly (any other failure raises ``OSError``)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        (tmp / "complete").write_text("")
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "complete").exists():  # not another process that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_arrays(
    key: str, names: list[str], build: Callable[[], Mapping[str, np.ndarray]], *, mmap: bool = True
) -> dict[str, np.ndarray]:
    """The arrays of entry ``key``: read (memory-mapped, read-only) if cached, else built.

    ``build`` returns every array in ``names``; its result is written to the cache and then read
    back from it, so every process uses the same mapped files. With the cache off, or a folder
    that cannot be written, the built arrays are returned as they are.
    """
    root = cache_dir()
    if root is None:
        return dict(build())
    folder = root / key
    if (folder / "complete").exists():
        arrays = _load(folder, names, mmap)
        if arrays is not None:
            return arrays
        shutil.rmtree(folder, ignore_errors=True)  # corrupt: rebuild it
    built = dict(build())
    try:
        _save(folder, {n: built[n] for n in names})
    except OSError as err:
        _log.warning("cache folder %s cannot be written (%s: %s): the arrays are kept in memory "
                     "only", root, type(err).__name__, err)
        return built
    arrays = _load(folder, names, mmap) if (folder / "complete").exists() else None
    return arrays if arrays is not None else built
