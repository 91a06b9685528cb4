"""One way to compile the project's numba kernels: cached on disk when possible."""

from __future__ import annotations

from collections.abc import Callable


def cached_njit(**kwargs) -> Callable:
    """``numba.njit(cache=True, **kwargs)``, or without a cache when no cache dir is writable.

    Numba caches next to the module, or in its user-wide cache dir when the package dir is
    read-only; if neither works it raises at decoration time, and the kernel is then compiled
    once per process instead.
    """
    from numba import njit

    def wrap(fn):
        try:
            return njit(cache=True, **kwargs)(fn)
        except RuntimeError:
            return njit(cache=False, **kwargs)(fn)

    return wrap
