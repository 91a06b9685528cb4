"""Every command's help answers with examples, without importing heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMMANDS = ["gen", "recon", "render", "mesh", "eval", "view", "app", "weights", "weights download"]


def test_cli_import_is_light():
    """`geolrm --help` stays fast because the CLI imports no torch/transformers/rembg."""
    code = (
        "import sys, geolrm_cli.app\n"
        "heavy = [m for m in ('torch', 'numba', 'transformers', 'diffusers', 'rembg', 'trimesh',"
        " 'xatlas', 'viser', 'gradio') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_shows_examples(cli, command):
    code, out, err = cli(*command.split(), "--help")
    assert code == 0, err
    assert "Examples" in out
    assert "geolrm " in out.split("Examples", 1)[1]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["mesh", "model.ply", "--resolution", "4"], "--resolution"),
        (["mesh", "model.ply", "--no-such-option"], "--no-such-option"),
    ],
)
def test_usage_errors_exit_2_without_traceback(cli, args, fragment):
    """Option errors (typer's own copy of click raises them) end with exit code 2 and click's
    usage message, not a traceback."""
    code, _, err = cli(*args)
    assert code == 2
    assert "Traceback" not in err and fragment in err


def test_missing_optional_package_is_one_line() -> None:
    from pipelines.errors import InputError, require_package

    require_package("json", "the thing", "extra", "json")  # installed: nothing happens
    with pytest.raises(InputError) as e:
        require_package("no_such_package_xyz", "the viewer", "viewer", "no-such-package>=1")
    assert str(e.value) == (
        "the viewer needs no_such_package_xyz, an optional dependency; install it with "
        "pip install 'geolrm[viewer]' (or pip install 'no-such-package>=1')"
    )
