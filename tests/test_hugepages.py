"""pipelines.hugepages: big CPU buffers asked onto transparent huge pages, small ones not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipelines import hugepages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_faults() -> int:
    """Huge pages the kernel has handed out at page faults so far (/proc/vmstat; smaps'
    AnonHugePages does not count them on every kernel)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("thp_fault_alloc "):
            return int(line.split()[1])
    return 0


def test_empty_shapes_and_dtypes() -> None:
    small = hugepages.empty(3, 4)
    assert small.shape == (3, 4) and small.dtype == torch.float32
    big = hugepages.empty(2, hugepages.MIN_BYTES // 4, dtype=torch.float64)
    assert big.shape == (2, hugepages.MIN_BYTES // 4) and big.dtype == torch.float64
    big.fill_(1.5)
    assert float(big.sum()) == 1.5 * big.numel()


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not THP.is_file() or "[never]" in THP.read_text(),
    reason="no transparent huge pages on this system",
)
def test_big_buffers_land_on_huge_pages() -> None:
    n = (256 << 20) // 4  # 256 MB: 128 huge pages
    before = _thp_faults()
    big = hugepages.empty(n)
    big.fill_(1.0)  # first touch: the pages are allocated now
    assert _thp_faults() - before >= 64, "most of the buffer should be on 2 MB pages"
    if "[madvise]" in THP.read_text():  # without the advice a buffer stays on 4 KB pages
        before = _thp_faults()
        plain = torch.empty(n)
        plain.fill_(1.0)
        assert _thp_faults() - before < 64
