"""`python -m pipelines.warmup`: fills numba's cache, and never raises on a failing step."""

from __future__ import annotations

import pytest

from pipelines import warmup


def test_failing_step_is_a_note(monkeypatch):
    def boom():
        raise RuntimeError("no locator available\nsecond line")

    monkeypatch.setitem(warmup.STEPS, "boom", boom)
    logged: list[str] = []
    times = warmup.warm_up(["boom"], log=logged.append)
    assert times == {"boom": None}
    assert len(logged) == 1 and logged[0].startswith("note: warm-up step 'boom' failed")
    assert "second line" not in logged[0]
    assert warmup.main(["--only", "boom"]) == 1


@pytest.mark.parametrize("step", ["raster", "geolrm"])
def test_steps_run_and_cache(step):
    """The steps call the real entry points; the checkout's kernels can be cached."""
    times = warmup.warm_up([step], log=lambda _msg: None)
    assert times[step] is not None
    assert warmup.cache_note() is None


def test_every_step_is_listed():
    assert list(warmup.STEPS) == ["raster", "optimize", "turntable", "mesh", "geolrm"]
