"""DINOv2 state-dict key names: the official (transformers 4.x) naming and transformers 5.x's.

The released GeoLRM weights name DINOv2's attention as transformers 4.34 did
(``encoder.layer.N.attention.attention.query.*`` ...); transformers 5.x renamed it
(``encoder.layer.N.attention.q_proj.*`` ...). Keys are the part of a state-dict key from the
DINOv2 model's root (any prefix before ``encoder.layer.N.`` is kept); keys outside the encoder
layers, or already in the target naming, pass unchanged.
"""

from __future__ import annotations

import re

__all__ = [
    "dinov2_key_to_installed",
    "dinov2_key_to_new",
    "dinov2_key_to_official",
    "dinov2_uses_new_names",
]

# official (transformers 4.x) <-> transformers 5.x names, inside encoder.layer.N.attention.
_DINO_OLD_TO_NEW = (
    ("attention.attention.query.", "attention.q_proj."),
    ("attention.attention.key.", "attention.k_proj."),
    ("attention.attention.value.", "attention.v_proj."),
    ("attention.output.dense.", "attention.o_proj."),
)
_DINO_LAYER = re.compile(r"(^|\.)encoder\.layer\.\d+\.")


def dinov2_uses_new_names() -> bool:
    """True when the installed transformers names DINOv2 attention q_proj/k_proj/v_proj/o_proj."""
    from transformers.models.dinov2 import modeling_dinov2 as m

    return not hasattr(m, "Dinov2SelfAttention")


def _rename(key: str, to_new: bool) -> str:
    """``key`` with its first matching attention name inside ``encoder.layer.N.`` renamed (4.x ->
    5.x when ``to_new``, else 5.x -> 4.x)."""
    m = _DINO_LAYER.search(key)
    if m is None:
        return key
    head, tail = key[: m.end()], key[m.end() :]
    for old, new in _DINO_OLD_TO_NEW:
        src, dst = (old, new) if to_new else (new, old)
        if tail.startswith(src):
            return head + dst + tail[len(src) :]
    return key


def dinov2_key_to_official(key: str) -> str:
    """Map a DINOv2 state-dict key of transformers 5.x naming to the official 4.x naming."""
    return _rename(key, to_new=False)


def dinov2_key_to_new(key: str) -> str:
    """Map a DINOv2 state-dict key of the official 4.x naming to transformers 5.x naming."""
    return _rename(key, to_new=True)


def dinov2_key_to_installed(key: str) -> str:
    """Map a DINOv2 key in either naming to what the installed transformers expects."""
    if dinov2_uses_new_names():
        return dinov2_key_to_new(key)
    return dinov2_key_to_official(key)
