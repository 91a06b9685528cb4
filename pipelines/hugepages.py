"""Large CPU tensors on transparent huge pages.

GeoLRM's cross-view attention writes each layer's projected values of all views (1.7 GB at 21
views x 560 px) and then gathers from them at random. On 4 KB pages the first touch of a fresh
allocation page-faults every 4 KB and the gathers miss the TLB on almost every tap; on 2 MB pages
both mostly go away (one layer at 21 x 560 on a 2-core CPU: the projection GEMM 3.0-3.4 s instead
of 3.6-4.4 s, the sampling 2.5-2.6 s instead of 2.9-3.6 s; ``bench/RESULTS.md``).

Linux hands huge pages to memory that asks for them (``madvise(MADV_HUGEPAGE)``) when
``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` or ``always``; elsewhere, and for
small tensors, :func:`empty` is plain ``torch.empty``. The contents are the same either way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

import torch

__all__ = ["empty"]

#: tensors smaller than this stay on normal pages (huge pages pay off on big, fresh buffers)
MIN_BYTES = 64 << 20
_HUGE = 2 << 20  # x86-64 and arm64 (4 KB base pages) transparent huge page size
_MADV_HUGEPAGE = 14


@functools.cache
def _madvise():
    """libc's ``madvise``, or None off Linux or when it cannot be found."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    fn = libc.madvise
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def empty(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """An uninitialised CPU tensor, on huge pages where the OS allows (see the module)."""
    t = torch.empty(*shape, dtype=dtype)
    madvise = _madvise()
    nbytes = t.numel() * t.element_size()
    if madvise is None or nbytes < MIN_BYTES:
        return t
    start = -(-t.data_ptr() // _HUGE) * _HUGE  # the 2 MB-aligned span inside the buffer
    end = (t.data_ptr() + nbytes) // _HUGE * _HUGE
    if end > start:
        madvise(start, end - start, _MADV_HUGEPAGE)  # a refusal (EINVAL) leaves normal pages
    return t
