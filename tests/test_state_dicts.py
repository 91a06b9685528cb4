"""The one checkpoint-file reader: safetensors and torch pickles round trip, Lightning's
``state_dict`` wrapper is unwrapped, legacy pickles load, bad files are one-line input errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import InputError
from pipelines.state_dicts import load_state_dict


def _state() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(3, 4, generator=gen), "b": torch.arange(5)}


def _same(got: dict, want: dict) -> bool:
    return got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_round_trips(tmp_path) -> None:
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.ckpt")
    torch.save(state, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    for name in ("w.safetensors", "w.pth", "w.ckpt", "legacy.bin"):
        assert _same(load_state_dict(tmp_path / name), state), name
    assert _same(load_state_dict(str(tmp_path / "w.pth")), state)


def test_bad_files_are_one_line_input_errors(tmp_path) -> None:
    with pytest.raises(InputError, match=r"weights file .*none\.pth not found"):
        load_state_dict(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 16)
    for name in ("junk.pth", "junk.safetensors"):
        with pytest.raises(InputError, match=f"{name}: cannot read the weights") as e:
            load_state_dict(tmp_path / name)
        assert "\n" not in str(e.value)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(InputError, match="list.pth: not a state dict"):
        load_state_dict(tmp_path / "list.pth")
