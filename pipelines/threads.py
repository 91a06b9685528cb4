"""The library's one thread policy: torch's intra-op threads and numba's kernel threads.

Two facts shape it:

* numba's OpenMP layer, when it starts (on its first parallel launch or
  ``numba.get_num_threads()``), resets the process-wide OpenMP thread count that torch's own
  ops read. :func:`start_numba` starts it once, up front, and puts torch's count back, so
  nothing later changes it behind the caller's back (and every run in a process, e.g. each
  photo of a folder, sees the same numerics as a single run).
* The torch glue around the numba kernels (SH colour, concatenations, the optimiser's losses)
  is small; on a busy machine a second intra-op thread mostly waits for a scheduler time slice.
  Those stretches run under :func:`torch_threads` ``(1)``, which also fixes torch's reduction
  order (deterministic results for a fixed seed).

The numba kernels give the same bits for any thread count, so their count is chosen for speed
alone: :class:`NumbaThreadPicker` times 1 thread against all cores while a loop runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numba
import torch

__all__ = ["NumbaThreadPicker", "start_numba", "torch_threads"]

_numba_started = False


def start_numba() -> None:
    """Start numba's threading layer now (once per process), keeping torch's intra-op thread
    count as it was before."""
    global _numba_started
    if _numba_started:
        return
    n = torch.get_num_threads()
    numba.get_num_threads()  # starts the pool; its OpenMP start-up resets the count torch reads
    torch.set_num_threads(n)
    _numba_started = True


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block (or, as a decorator, the function) with ``n`` torch intra-op threads,
    restoring the count afterwards; ``None`` leaves the count alone.

    numba's pool is started first (:func:`start_numba`), so a kernel launched inside the block
    cannot reset the count under it.
    """
    if n is None:
        yield
        return
    start_numba()
    n = max(1, int(n))
    old = torch.get_num_threads()
    if old == n:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class NumbaThreadPicker:
    """Picks the numba thread count of the CPU rasteriser while a loop runs.

    The kernels give bit-identical results for any thread count, so this only changes speed:
    on an idle machine all cores are ~1.8x faster than one, on a busy one a single thread can
    be several times faster (the OpenMP workers spin waiting for each other). With
    ``fixed=None`` the two settings are timed on a few steps every ``period`` steps and the
    faster one is used in between. Use as a context manager (the count is restored on exit);
    call :meth:`before` at the start of each step and :meth:`after` with its duration.

    Args:
        fixed: a fixed thread count (clamped to ``[1, NUMBA_NUM_THREADS]``), or None to pick.
        active: False: do nothing (the loop does not run the numba kernels).
    """

    probe = 5
    period = 100

    def __init__(self, fixed: int | None, active: bool):
        start_numba()
        self.saved = numba.get_num_threads()
        most = int(numba.config.NUMBA_NUM_THREADS)
        if not active:
            self.options: list[int] = []
        elif fixed is not None:
            self.options = [max(1, min(int(fixed), most))]
        else:
            self.options = [1, most] if most > 1 else [1]
        self.cost: dict[int, float] = {}
        self.samples: list[float] = []
        self.current = self.options[-1] if self.options else None

    def _set(self, n: int) -> None:
        if n != numba.get_num_threads():
            numba.set_num_threads(n)
        self.current = n

    def before(self, step: int) -> None:
        """Set the thread count for the 1-based ``step``."""
        if not self.options:
            return
        if len(self.options) == 1:
            self._set(self.options[0])
            return
        phase = (step - 1) % self.period
        best = min(self.options, key=lambda n: self.cost.get(n, -1.0))
        other = [n for n in self.options if n != best][0]
        if step <= 2 * self.probe + 2:  # warm up, then time both settings once
            want = self.options[-1] if step <= self.probe + 2 else self.options[0]
        else:
            want = other if phase < self.probe else best
        if want != self.current:
            self.samples = []
        self._set(want)

    def after(self, seconds: float, clean: bool) -> None:
        """Record a step's duration (``clean``: no densification or other extra work)."""
        if len(self.options) < 2 or not clean:
            return
        self.samples.append(seconds)
        if len(self.samples) >= 3:
            srt = sorted(self.samples)
            self.cost[self.current] = srt[len(srt) // 2]

    def __enter__(self) -> NumbaThreadPicker:
        return self

    def __exit__(self, *_exc) -> None:
        if self.options:
            numba.set_num_threads(self.saved)
