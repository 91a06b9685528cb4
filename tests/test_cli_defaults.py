"""Every CLI default equals the library's: the config dataclasses own the defaults and the
Typer options read them (introspects the commands' parameters)."""

from __future__ import annotations

import dataclasses
from enum import Enum

import pytest
import typer.main

from geolrm_cli.app import app
from pipelines.defaults import DEFAULT_TEXTURE_SIZE, EvalConfig, MeshConfig, TurntableConfig
from pipelines.options import GenOptions, ReconOptions

#: command -> (its config dataclass, CLI name -> field name, CLI name -> default elsewhere)
CONFIGS = {
    "recon": (ReconOptions, {}, {}),
    "gen": (GenOptions, {"rembg": "remove_bg"}, {"texture_size": DEFAULT_TEXTURE_SIZE}),
    "render": (TurntableConfig, {"elevation": "elevation_deg", "fov": "fov_deg"}, {}),
    "mesh": (MeshConfig, {}, {"texture_size": DEFAULT_TEXTURE_SIZE}),
    "eval": (EvalConfig, {}, {}),
}
#: the CLI's own options: inputs, outputs, switches with no library default
BATCH = {"overwrite", "ray", "ray_address", "ray_cpus_per_worker", "workers"}  # folder input
CLI_ONLY = {
    "recon": {"views", "output", "device", *BATCH},
    "gen": {"photo", "output", "device", "texture", *BATCH},
    "render": {
        "model",
        "output",
        "video",
        "images",
        "depth",
        "alpha",
        "sheet",
        "cameras",
        "distance",
        "background",
        "up",
        "device",
    },
    "mesh": {
        "model",
        "output",
        "trunc",
        "image_size",
        "texture",
        "cameras",
        "fill",
        "up",
        "device",
    },
    "eval": {"out", "gt", "mesh", "resolution", "json_path", "mesh_up", "up", "device"},
}


def _plain(value):
    return value.value if isinstance(value, Enum) else value


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cli_defaults_are_the_config_defaults(name: str) -> None:
    command = typer.main.get_command(app).commands[name]
    config, renamed, elsewhere = CONFIGS[name]
    fields = {f.name: f for f in dataclasses.fields(config)}
    defaults = config()
    checked = set()
    for param in command.params:
        if param.name in CLI_ONLY[name]:
            continue
        if param.name in elsewhere:
            expected = elsewhere[param.name]
        else:
            field = renamed.get(param.name, param.name)
            assert field in fields, f"{name} --{param.name} has no field in {config.__name__}"
            expected = getattr(defaults, field)
        assert _plain(param.default) == _plain(expected), (name, param.name)
        checked.add(param.name)
    assert len(checked) >= 3, checked


def test_the_mapping_covers_the_config() -> None:
    """The dataclass fields the commands do not expose are few and known."""
    exposed = {p.name for p in typer.main.get_command(app).commands["gen"].params}
    hidden = {f.name for f in dataclasses.fields(GenOptions)} - exposed - {"remove_bg"}
    assert hidden == {"mesh_faces"}
    exposed = {p.name for p in typer.main.get_command(app).commands["recon"].params}
    assert {f.name for f in dataclasses.fields(ReconOptions)} <= exposed
