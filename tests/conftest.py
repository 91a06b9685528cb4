"""Test-wide settings: never touch the network, small thread pools, fixed seeds."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the real ``geolrm`` entry point in-process: ``code, out, err = cli("render", ...)``."""
    from geolrm_cli.app import app
    from geolrm_cli.console import run_cli

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["geolrm", *map(str, args)])
        capsys.readouterr()
        code = run_cli(app)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def assert_one_line_error(err: str, *fragments: str) -> None:
    """Exactly one non-empty stderr line, starting ``error:``, containing every fragment."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


MPS_MISSING_OP = "The operator 'aten::standin_op' is not currently implemented for the MPS device."


@pytest.fixture
def mps_standin(monkeypatch):
    """A CPU stand-in for an Apple GPU (no Apple hardware here): torch reports MPS available,
    and moving a module to ``mps`` raises the NotImplementedError torch raises for an operation
    MPS lacks, so the network stages must rerun on the CPU. Everything else is real."""
    import torch

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    move = torch.nn.Module.to

    def to(self, *args, **kwargs):
        if any(str(a).startswith("mps") for a in (*args, *kwargs.values())):
            raise NotImplementedError(MPS_MISSING_OP)
        return move(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "to", to)


@pytest.fixture
def numba_without_cache(monkeypatch) -> list[bool]:
    """``numba.njit`` as where no cache dir is writable: ``cache=True`` raises numba's
    RuntimeError at decoration, ``cache=False`` compiles. Returns the ``cache`` flag of each
    ``njit`` call, in order."""
    import numba

    real_njit = numba.njit
    calls: list[bool] = []

    def failing_njit(*args, cache=False, **kwargs):
        calls.append(cache)
        if cache:
            raise RuntimeError("cannot cache function: no locator available")
        return real_njit(*args, **kwargs)

    monkeypatch.setattr(numba, "njit", failing_njit)
    return calls
