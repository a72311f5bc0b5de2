"""Optional dependencies: imported only when used, one line naming the extra when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Imports ``module``, or raises one ``ImportError`` line naming the pip extra.

    Example:
        >>> require("json", "none", "reading JSON").__name__
        'json'
        >>> require("no_such_module_x", "tensorboard", "TensorBoard logging")
        Traceback (most recent call last):
        ...
        ImportError: TensorBoard logging needs no_such_module_x: pip install 'jaxtune[tensorboard]'
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ImportError(f"{what} needs {top}: pip install 'jaxtune[{extra}]'") from None
