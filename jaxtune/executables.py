"""Compiled bucket programs kept on disk, found again without tracing.

JAX's persistent compilation cache (:mod:`jaxtune.compilation_cache`) saves the
XLA compile, but its key is the lowered program, so every process still traces
and lowers the bucket's step (for the main job about a second, most of the
start-up left after ``import jax``). This cache keys a bucket's compiled
programs by their *sources* instead, so a later process loads them without
tracing anything:

* the source of jaxtune itself and the versions of jax, jaxlib, flax, optax,
  chex and numpy;
* the backend, its devices, the host CPU's features and ``XLA_FLAGS``, and every
  ``jax.config`` value;
* the experiment: every field (data by shape and dtype; plain values by
  ``repr``), and for each callable (the model factory, a Flax module's class and
  its bases, any function a field holds) the files that define it and, followed
  name by name through their globals, the files of the functions, classes and
  modules they use;
* the bucket's static values, the population size and the program variant (with
  the XLA compile options, :data:`jaxtune.programs.CPU_COMPILER_OPTIONS`).

Anything whose source cannot be found (code typed at a prompt, ``exec``) turns
the cache off for that experiment: it is traced as usual. A corrupt or
unreadable entry is ignored and rewritten. Only programs compiled by this process
are stored (one loaded from JAX's cache cannot be serialized again, see
:func:`cache_hits`). Entries live in
``<compilation cache>/jaxtune-programs`` and are used only while JAX's persistent
cache is on; ``JAXTUNE_PROGRAM_CACHE=0`` turns this cache off alone. The entries
keep to :func:`jaxtune.compilation_cache.limit_bytes` (4 GB by default): a save
removes the least recently used ones beyond it.

Example:
    >>> import jaxtune as jt
    >>> exp = jt.Experiment(
    ...     data=jt.data.teacher_student(n_train=40, n_test=10, dim=3),
    ...     model=jt.models.MLP(width=4, num_outputs=1),
    ...     space=jt.Space(lr=jt.Real(1e-3, 1e-1, log=True)), defaults={"batch_size": 8})
    >>> a = fingerprint(exp, {}, size=4, variant="own_batch")
    >>> a == fingerprint(exp, {}, size=4, variant="own_batch") != fingerprint(
    ...     exp, {}, size=8, variant="own_batch")
    True
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.metadata
import inspect
import json
import os
import pickle
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

__all__ = ["ENV", "cache_hits", "compiled_here", "directory", "fingerprint", "load", "save"]

ENV = "JAXTUNE_PROGRAM_CACHE"
_FORMAT = 1
_MAX_FILES = 400
_PACKAGES = ("jax", "jaxlib", "flax", "optax", "chex", "numpy")
_VOLATILE_CONFIG = ("cache", "log", "debug_", "traceback", "profil", "explain")


class _Unhashable(Exception):
    """Some code of the experiment has no source file to hash."""


_HITS = [0]


def _count_hits(event: str, **_: Any) -> None:
    if event == "/jax/compilation_cache/cache_hits":
        _HITS[0] += 1


@functools.lru_cache(maxsize=1)
def _listening() -> None:
    jax.monitoring.register_event_listener(_count_hits)


def cache_hits() -> int:
    """Programs loaded from JAX's persistent cache in this process so far (an
    executable loaded from there cannot be serialized again: jaxlib 0.10.2 on CPU
    loses its functions, so only programs compiled here are stored)."""
    _listening()
    return _HITS[0]


@contextlib.contextmanager
def compiled_here() -> Iterator[None]:
    """Compiles in this block bypass JAX's persistent cache (so they can be stored).

    JAX decides once per process whether it uses its cache, so the switch also
    resets that decision (a private function: where it is missing, compiles may
    still hit the cache, and :func:`cache_hits` then keeps them out of the store).
    """
    try:
        from jax._src.compilation_cache import reset_cache
    except ImportError:  # pragma: no cover - another jax
        yield
        return
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    reset_cache()
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
        reset_cache()


def directory() -> Path | None:
    """Where entries live (``None``: the cache is off)."""
    setting = os.environ.get(ENV, "").strip().lower()
    base = jax.config.jax_compilation_cache_dir
    if setting in {"0", "off", "false", "no"} or not base:
        return None
    return Path(base) / "jaxtune-programs"


@functools.lru_cache(maxsize=1)
def _environment() -> str:
    """jaxtune's sources, library versions and backend (fixed per process)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    for name in _PACKAGES:
        try:
            h.update(f"{name}={importlib.metadata.version(name)}".encode())
        except importlib.metadata.PackageNotFoundError:
            h.update(f"{name}=?".encode())
    devices = jax.devices()
    h.update(repr([(d.platform, d.device_kind) for d in devices]).encode())
    h.update(f"{devices[0].client.platform_version}|{_cpu_flags()}".encode())
    h.update(f"{jax.process_count()}|{os.environ.get('XLA_FLAGS', '')}".encode())
    return h.hexdigest()


def _config() -> str:
    """Every ``jax.config`` value in effect here (a context such as ``enable_x64``
    included), read at each call."""
    config = {k: repr(getattr(jax.config, k, v)) for k, v in jax.config.values.items()
              if not any(w in k for w in _VOLATILE_CONFIG)}
    return json.dumps(config, sort_keys=True)


def _cpu_flags() -> str:
    """The host CPU's features (compiled CPU code is specific to them)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        import platform

        return platform.processor()


class _Sources:
    """The source files behind some objects, followed through their globals."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.reprs: list[str] = []
        self._seen: set[int] = set()

    def add_file(self, path: str | None) -> None:
        if not path or not os.path.isfile(path):
            raise _Unhashable(path)
        self.files.add(os.path.realpath(path))
        if len(self.files) > _MAX_FILES:
            raise _Unhashable("too many files")

    def value(self, obj: Any) -> None:
        """A value a program may depend on: its code, or else its ``repr``."""
        if id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        if isinstance(obj, (types.FunctionType, type, types.ModuleType)) and _covered(obj):
            self.reprs.append(f"{_module_name(obj)}.{getattr(obj, '__qualname__', '')}")
            if isinstance(obj, types.FunctionType):  # its code is in the key, not its values
                self._values_of(obj)
        elif isinstance(obj, functools.partial):
            self.value(obj.func)
            for a in (*obj.args, *obj.keywords.values()):
                self.value(a)
        elif isinstance(obj, types.MethodType):
            self.value(obj.__func__)
            self.reprs.append(type(obj.__self__).__qualname__)
        elif isinstance(obj, types.FunctionType):
            self._function(obj)
        elif isinstance(obj, type):
            self._class(obj)
        elif isinstance(obj, types.ModuleType):
            self.add_file(getattr(obj, "__file__", None))
        elif isinstance(obj, (types.BuiltinFunctionType, np.ufunc)):
            self.reprs.append(f"{getattr(obj, '__module__', '')}.{obj.__name__}")
        else:
            if type(obj).__module__ not in {"builtins", "numpy"}:
                self._class(type(obj))
            self.reprs.append(repr(obj))

    def _function(self, fn: types.FunctionType) -> None:
        if _generated(fn):
            return
        self.add_file(fn.__code__.co_filename)
        for name in _code_names(fn.__code__):
            if name in fn.__globals__:
                g = fn.__globals__[name]
                if isinstance(g, (types.FunctionType, type, types.ModuleType,
                                  functools.partial)):
                    self.value(g)
        self._values_of(fn)

    def _values_of(self, fn: types.FunctionType) -> None:
        """The values a function closes over or defaults to."""
        for cell in fn.__closure__ or ():
            try:
                self.value(cell.cell_contents)
            except ValueError:  # an empty cell
                continue
        for default in (*(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
            self.value(default)

    def _class(self, cls: type) -> None:
        for base in cls.__mro__:
            if _covered(base):
                self.reprs.append(f"{base.__module__}.{base.__qualname__}")
                continue
            try:
                self.add_file(inspect.getsourcefile(base))
            except TypeError as err:  # a class without a file
                raise _Unhashable(base.__qualname__) from err
            for member in vars(base).values():
                if isinstance(member, types.FunctionType) and id(member) not in self._seen:
                    self._seen.add(id(member))
                    self._function(member)


def _generated(fn: types.FunctionType) -> bool:
    """A method a dataclass generates from its class's source (which is in the key)."""
    name = fn.__name__
    return (fn.__code__.co_filename.startswith("<") and name.startswith("__")
            and name.endswith("__"))


def _module_name(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, types.ModuleType) else (obj.__module__ or "")


def _covered(obj: Any) -> bool:
    """Code already in the key: jaxtune's own, the listed libraries', Python's."""
    top = _module_name(obj).split(".")[0]
    return top in {"jaxtune", *_PACKAGES} or top in sys.stdlib_module_names


def _code_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _field_value(value: Any) -> Any:
    """A dataset by its spec and array shapes, anything else as it is."""
    if hasattr(value, "spec") and hasattr(value, "x_train"):
        arrays = {k: (np.shape(v), str(np.asarray(v).dtype)) for k, v in vars(value).items()
                  if isinstance(v, (np.ndarray, jax.Array))}
        return repr((value.spec(), sorted(arrays.items())))
    return value


def fingerprint(experiment: Any, static: Mapping[str, Any], *, size: int,
                variant: str) -> str | None:
    """The key of the bucket ``static``'s programs for ``size`` members, or ``None``
    when some code of ``experiment`` has no source file to hash (see the module
    docstring for what the key covers)."""
    sources = _Sources()
    try:
        for field in dataclasses.fields(experiment):
            sources.value(_field_value(getattr(experiment, field.name)))
        sources.value(experiment.build_model(static))
    except _Unhashable:
        return None
    h = hashlib.sha256(f"{_FORMAT}|{_environment()}|{_config()}|{variant}|{int(size)}".encode())
    h.update(repr(sorted((k, repr(v)) for k, v in static.items())).encode())
    for text in sources.reprs:
        h.update(text.encode())
    for path in sorted(sources.files):
        h.update(path.encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def load(key: str | None) -> dict[str, Any] | None:
    """The entry stored under ``key``, or ``None`` (absent, off, or unreadable)."""
    where = directory()
    if key is None or where is None:
        return None
    path = where / f"{key}.pkl"
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f)
    except Exception:  # absent, truncated or from another version: traced instead
        return None
    if not (isinstance(entry, dict) and entry.get("key") == key):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # recently used: evicted last
    return entry


def save(key: str | None, entry: dict[str, Any]) -> None:
    """Stores ``entry`` under ``key`` atomically (a failure only costs the cache)."""
    where = directory()
    if key is None or where is None:
        return
    try:
        where.mkdir(parents=True, exist_ok=True)
        tmp = where / f".{key}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump({**entry, "key": key}, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, where / f"{key}.pkl")
    except Exception:  # read-only or full disk, an executable that cannot serialize
        return
    from jaxtune.compilation_cache import evict, limit_bytes

    with contextlib.suppress(ValueError):  # a bad limit setting: no eviction
        evict(where, limit_bytes(), suffix=".pkl", keep=f"{key}.pkl")
