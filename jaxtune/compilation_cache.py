"""JAX's persistent compilation cache, on by default, so a second run compiles nothing.

Compiling a bucket program costs seconds on CPU. With the persistent cache, XLA
executables are stored on disk and a later process (the second run of a study,
a resumed study, the next test session) loads them instead of compiling.

``import jaxtune`` turns the cache on under ``$XDG_CACHE_HOME/jaxtune/xla``
(``~/.cache/jaxtune/xla``), caching every compile however short, unless

* ``JAXTUNE_COMPILATION_CACHE=0`` (or ``off``/``false``) is set: no cache;
* ``JAXTUNE_COMPILATION_CACHE=/some/dir`` is set: that directory;
* JAX already has a cache directory (``jax_compilation_cache_dir`` or
  ``JAX_COMPILATION_CACHE_DIR``): jaxtune leaves JAX's settings alone.

The cache is bounded: when jaxtune turns it on, it removes the least recently
used entries beyond :func:`limit_bytes` (``JAXTUNE_CACHE_LIMIT_GB``, default 4
GB; ``0``: no limit), and the stored bucket programs beside it
(:mod:`jaxtune.executables`) keep to the same limit on each save. (JAX's own
eviction, ``jax_compilation_cache_max_size``, is not used: it fails on every
write to a directory that holds entries written without it.)

:func:`disable` turns it off for the rest of the process (call it before the
first compile). The cache key covers the program, the JAX/XLA versions, the
devices and the XLA flags, so a stale entry is never used; delete the directory
to reclaim its space.

Example:
    >>> import jaxtune.compilation_cache as cc
    >>> cc.cache_dir() is None or isinstance(cc.cache_dir(), str)
    True
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import jax

__all__ = ["ENV", "LIMIT_ENV", "cache_dir", "default_dir", "disable", "enable", "evict",
           "limit_bytes"]

ENV = "JAXTUNE_COMPILATION_CACHE"
LIMIT_ENV = "JAXTUNE_CACHE_LIMIT_GB"
_OFF = {"0", "off", "false", "no", ""}
_DEFAULT_LIMIT_GB = 4.0


def limit_bytes() -> int | None:
    """The size limit of each on-disk program cache, from ``JAXTUNE_CACHE_LIMIT_GB``
    (default 4 GB; ``0``: ``None``, no limit).

    Raises:
        ValueError: the variable is not a number >= 0.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    try:
        gb = float(text) if text else _DEFAULT_LIMIT_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ValueError(f"{LIMIT_ENV} must be a number of gigabytes >= 0 (0: no limit), "
                         f"got {text!r}")
    return int(gb * 1e9) or None


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxtune/xla``, or ``~/.cache/jaxtune/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxtune" / "xla"


def cache_dir() -> str | None:
    """The directory JAX caches compiled programs in (``None``: no cache)."""
    return jax.config.jax_compilation_cache_dir


def enable(path: str | os.PathLike | None = None, *, max_bytes: int | str | None = "env"
           ) -> str | None:
    """Turns the persistent cache on in ``path`` (default: :func:`default_dir`).

    Every compile is cached, however short (``jax_persistent_cache_min_compile_time_secs
    = 0``), and the least recently used entries beyond :func:`limit_bytes` are removed
    now (``max_bytes``: another limit, ``None`` for none). Returns the directory, or
    ``None`` if it cannot be created (the cache then stays off: compiling still works).
    """
    limit = limit_bytes() if max_bytes == "env" else max_bytes
    target = Path(path) if path is not None else default_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    evict(target, limit, suffix="-cache")
    return str(target)


def evict(directory: str | os.PathLike, limit: int | None, *, suffix: str,
          keep: str | None = None) -> int:
    """Removes the least recently used entries (files ending in ``suffix``; a JAX
    entry's ``-atime`` record goes with it) until the rest fit in ``limit`` bytes
    (``None``: no limit); the file named ``keep`` stays. Recency is a file's last
    access or modification, whichever is later. Returns the number removed.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> for i, name in enumerate(["a.pkl", "b.pkl", "c.pkl"]):
        ...     _ = (d / name).write_bytes(b"x" * 10)
        ...     os.utime(d / name, (i, i))
        >>> evict(d, 25, suffix=".pkl"), sorted(p.name for p in d.iterdir())
        (1, ['b.pkl', 'c.pkl'])
    """
    if limit is None:
        return 0
    entries = []
    for p in Path(directory).glob(f"*{suffix}"):
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            st = p.stat()
            entries.append((max(st.st_atime, st.st_mtime), st.st_size, p))
    total = sum(size for _, size, _ in entries)
    removed = 0
    for _, size, p in sorted(entries, key=lambda e: e[0]):
        if total <= limit:
            break
        if p.name == keep:
            continue
        with contextlib.suppress(OSError):
            p.unlink()
            removed += 1
        with contextlib.suppress(OSError):
            p.with_name(p.name.removesuffix(suffix) + "-atime").unlink()
        total -= size
    return removed


def disable() -> None:
    """Turns the persistent cache off for the rest of the process."""
    jax.config.update("jax_compilation_cache_dir", None)


def enable_default() -> str | None:
    """What ``import jaxtune`` does (see the module docstring)."""
    setting = os.environ.get(ENV)
    if setting is not None and setting.strip().lower() in _OFF:
        return None
    if cache_dir() is not None or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return cache_dir()
    try:
        limit: int | str | None = limit_bytes()
    except ValueError as e:  # a bad setting must not break `import jaxtune`
        warnings.warn(f"{e}; using {_DEFAULT_LIMIT_GB:g} GB", stacklevel=2)
        limit = int(_DEFAULT_LIMIT_GB * 1e9)
    return enable(setting if setting is not None else None, max_bytes=limit)
