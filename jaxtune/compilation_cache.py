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

import os
from pathlib import Path

import jax

__all__ = ["ENV", "cache_dir", "default_dir", "disable", "enable"]

ENV = "JAXTUNE_COMPILATION_CACHE"
_OFF = {"0", "off", "false", "no", ""}


def default_dir() -> Path:
    """``$XDG_CACHE_HOME/jaxtune/xla``, or ``~/.cache/jaxtune/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jaxtune" / "xla"


def cache_dir() -> str | None:
    """The directory JAX caches compiled programs in (``None``: no cache)."""
    return jax.config.jax_compilation_cache_dir


def enable(path: str | os.PathLike | None = None) -> str | None:
    """Turns the persistent cache on in ``path`` (default: :func:`default_dir`).

    Every compile is cached, however short (``jax_persistent_cache_min_compile_time_secs
    = 0``). Returns the directory, or ``None`` if it cannot be created (the cache
    then stays off: compiling still works).
    """
    target = Path(path) if path is not None else default_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return str(target)


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
    return enable(setting if setting is not None else None)
