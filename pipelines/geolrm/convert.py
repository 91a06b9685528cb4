"""Convert a GeoLRM checkpoint (any accepted format) to ``.safetensors`` with official key names.

The keys and shapes are checked against the model built from a config
(:class:`~pipelines.geolrm.model.GeoLRM`, on the meta device) by
:func:`~pipelines.geolrm.checkpoint.load_geolrm_state_dict`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from pipelines.errors import InputError
from pipelines.geolrm.checkpoint import load_geolrm_state_dict
from pipelines.geolrm.model import GeoLRM

__all__ = ["convert_checkpoint"]


def convert_checkpoint(src, dst, config=None) -> Path:
    """Write ``src`` (any accepted format) as a ``.safetensors`` with official key names.

    The keys are checked against the model built from ``config`` (None = the released model,
    built on the meta device, nothing allocated). The file is written atomically (temporary
    file in the destination folder, then ``os.replace``).

    Returns:
        The destination path.
    """
    dst = Path(dst)
    if dst.suffix.lower() != ".safetensors":
        raise InputError(f"convert writes .safetensors; got destination {dst.name}")
    with torch.device("meta"):
        model = GeoLRM(config)
    state = load_geolrm_state_dict(src, model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dst.name + ".", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": "pt", "source": "GeoLRM official key names"})
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dst
