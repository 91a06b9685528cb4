"""The thread policy (pipelines.threads): torch's intra-op count and numba's kernel threads."""

from __future__ import annotations

import numba
import torch

from pipelines.threads import NumbaThreadPicker, start_numba, torch_threads


def test_start_numba_keeps_torch_thread_count():
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        start_numba()
        numba.get_num_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_torch_threads_sets_and_restores():
    old = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == old
    with torch_threads(None):
        assert torch.get_num_threads() == old

    @torch_threads(1)
    def inside() -> int:
        return torch.get_num_threads()

    assert inside() == 1 and torch.get_num_threads() == old


def test_torch_threads_restores_after_an_error():
    old = torch.get_num_threads()
    try:
        with torch_threads(1):
            raise ValueError("boom")
    except ValueError:
        pass
    assert torch.get_num_threads() == old


def test_numba_thread_picker():
    saved = numba.get_num_threads()
    most = int(numba.config.NUMBA_NUM_THREADS)
    with NumbaThreadPicker(None, active=False) as off:
        off.before(1)
        assert off.options == [] and numba.get_num_threads() == saved
    with NumbaThreadPicker(1, active=True) as fixed:
        fixed.before(1)
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == saved
    if most < 2:
        return
    with NumbaThreadPicker(None, active=True) as picker:
        # warm-up on all cores, then one timed probe of each setting
        for step in range(1, 2 * picker.probe + 3):
            picker.before(step)
            want = most if step <= picker.probe + 2 else 1
            assert picker.current == want
            picker.after(1.0 if picker.current == most else 0.1, clean=True)
        picker.before(picker.period + picker.probe + 1)  # past the probe window: the faster
        assert picker.current == 1
        picker.after(9.9, clean=False)  # steps with extra work are not timed
        assert picker.cost[1] == 0.1
    assert numba.get_num_threads() == saved
