"""What mypyc needs told about our classes when build/compiled.py compiles
the hot path: a compiled class is native, and interpreted code may subclass
it only if it says so (``@mypyc_attr(allow_interpreted_subclasses=True)``).
Interpreted, the decorator changes nothing, and the image, which has no
mypy_extensions, gets this no-op instead."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

try:
    from mypy_extensions import mypyc_attr
except ImportError:
    _T = TypeVar("_T")

    def mypyc_attr(*attrs: str, **kwattrs: object) -> Callable[[_T], _T]:
        return lambda cls: cls

__all__ = ["mypyc_attr"]
