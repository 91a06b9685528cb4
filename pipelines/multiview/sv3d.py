"""SV3D_p from diffusers components: one framed photo -> 21 orbit frames with known cameras.

What it computes (Stability AI's ``sgm`` code for ``sv3d_p``, re-written from its published
behaviour; facts in ``shared/reference/multiview.md`` section 2):

* **weights**: the original single file ``sv3d_p.safetensors`` (``sgm`` naming) mapped into
  diffusers / transformers modules: ``model.diffusion_model.*`` -> :class:`SV3DUNet` (a
  ``UNetSpatioTemporalConditionModel`` with 8 input channels, the SVD conversion mapping),
  ``first_stage_model.decoder.*`` -> the ``AutoencoderKL`` decoder (no ``post_quant_conv``),
  ``conditioner.embedders.1.encoder.{encoder,quant_conv}.*`` -> its encoder,
  ``conditioner.embedders.0.open_clip.model.visual.*`` -> ``CLIPVisionModelWithProjection``
  (OpenCLIP ViT-H/14);
* **camera conditioning**: per frame a 1280-d vector ``[emb256(cond_aug) | emb512(polar) |
  emb512(azimuth)]`` of sinusoidal embeddings (cos first, max period 10000; angles in
  radians, polar = 90 deg - elevation, cond_aug = 1e-5) through the add-embedding MLP, added
  to the timestep embedding of that frame;
* **image conditioning**: the CLIP ViT-H/14 image embedding of the photo as the single
  cross-attention token; the VAE posterior mode of ``photo + 1e-5 * noise`` (no scaling
  factor) concatenated to every frame's noisy latent (4 + 4 input channels);
* **sampler**: deterministic Euler in EDM form with Karras sigmas (0.002 .. 700, rho 7,
  50 steps, then 0), v-prediction scalings ``c_skip = 1 / (s^2 + 1)``, ``c_out = -s /
  sqrt(s^2 + 1)``, ``c_in = 1 / sqrt(s^2 + 1)``, ``c_noise = 0.25 ln s``;
* **guidance**: per frame, a triangle from 1.0 (frame 0) to 2.5 (frame 10) back to 1.0
  (frame 20) on the denoised output; the unconditional branch has a zero CLIP token and a
  zero concat latent, the same camera vectors;
* **frames**: frame ``i`` sits at azimuth ``(i + 1) * 360 / 21`` (the input view is the last
  frame, azimuth 0), at the given elevation; decoded in chunks (latents / 0.18215), and the
  last frame replaced by the input photo as the official script does.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNetSpatioTemporalConditionModel
from PIL import Image
from safetensors import safe_open

from pipelines.errors import InputError
from pipelines.multiview._common import (
    Placement,
    assign_weights,
    build_on_meta,
    check_sampling,
    latent_multiple,
    make_generator,
    randn,
    to_pil,
)
from pipelines.multiview.rigs import SV3D_NUM_FRAMES, sv3d_azimuths_deg

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "COND_AUG",
    "DEFAULT_SIZE",
    "SV3DOutput",
    "SV3DPipeline",
    "SV3DUNet",
    "azimuths_rad",
    "camera_vectors",
    "convert_openclip_visual",
    "convert_unet_state_dict",
    "convert_vae_state_dict",
    "edm_scalings",
    "karras_sigmas",
    "resize_antialiased",
    "sinusoidal_embedding",
    "triangle_guidance",
]

PathLike = str | os.PathLike

DEFAULT_SIZE = 576
DEFAULT_STEPS = 50
COND_AUG = 1e-5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 700.0, 7.0
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_NAME = "sv3d_p.safetensors"
#: optional architecture overrides next to the checkpoint (small test models)
CONFIG_NAME = "sv3d_config.json"

UNET_PREFIX = "model.diffusion_model."
DECODER_PREFIX = "first_stage_model.decoder."
ENCODER_PREFIX = "conditioner.embedders.1.encoder."
CLIP_PREFIX = "conditioner.embedders.0.open_clip.model.visual."

#: The released SV3D_p architecture (sv3d_p.yaml) in diffusers terms.
UNET_CONFIG = {
    "sample_size": 72,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": [
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "CrossAttnDownBlockSpatioTemporal",
        "DownBlockSpatioTemporal",
    ],
    "up_block_types": [
        "UpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
        "CrossAttnUpBlockSpatioTemporal",
    ],
    "block_out_channels": [320, 640, 1280, 1280],
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 1280,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": [5, 10, 20, 20],
    "num_frames": SV3D_NUM_FRAMES,
}
VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": DEFAULT_SIZE,
    "scaling_factor": 0.18215,
    "use_quant_conv": True,
    "use_post_quant_conv": False,
}
CLIP_CONFIG = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "patch_size": 14,
    "image_size": 224,
    "projection_dim": 1024,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


# --------------------------------------------------------------------------------------------
# conditioning maths


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """``[N, dim]``: ``[cos(t f_k), sin(t f_k)]`` with ``f_k = exp(-ln(max_period) k / (dim/2))``
    (``sgm``'s ``timestep_embedding``; diffusers ``Timesteps(dim, True, 0)``)."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(-math.log(max_period) * k / half)
    args = t.float().reshape(-1, 1) * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def azimuths_rad(num_frames: int = SV3D_NUM_FRAMES) -> torch.Tensor:
    """Conditioning azimuths in radians: the rig's, frame ``i`` at ``(i + 1) * 360 / n`` deg
    mod 360 (last = 0; :func:`~pipelines.multiview.rigs.sv3d_azimuths_deg`)."""
    return torch.deg2rad(sv3d_azimuths_deg(num_frames=num_frames))


def camera_vectors(
    elevation_deg: float | torch.Tensor = 10.0,
    azimuths: torch.Tensor | None = None,
    cond_aug: float = COND_AUG,
    num_frames: int = SV3D_NUM_FRAMES,
) -> torch.Tensor:
    """``[F, 1280]`` per-frame vectors ``[emb256(cond_aug) | emb512(polar) | emb512(azimuth)]``,
    polar = radians(90 - elevation), azimuths in radians (default :func:`azimuths_rad`)."""
    az = azimuths_rad(num_frames) if azimuths is None else torch.as_tensor(azimuths)
    n = az.numel()
    elev = torch.as_tensor(elevation_deg, dtype=torch.float64).expand(n)
    polar = torch.deg2rad(90.0 - elev)
    aug = torch.full((n,), float(cond_aug), dtype=torch.float64)
    return torch.cat(
        [
            sinusoidal_embedding(aug, 256),
            sinusoidal_embedding(polar, 512),
            sinusoidal_embedding(az.reshape(-1), 512),
        ],
        dim=-1,
    )


def triangle_guidance(
    num_frames: int = SV3D_NUM_FRAMES, max_scale: float = 2.5, min_scale: float = 1.0
) -> torch.Tensor:
    """``[F]`` guidance per frame: ``min + (max - min) * tri(linspace(0, 1, F))`` with
    ``tri(v) = 2 |v - floor(v + 0.5)|`` (``sgm`` ``TrianglePredictionGuider``, period 1)."""
    v = torch.linspace(0, 1, num_frames, dtype=torch.float64)
    tri = 2.0 * (v - torch.floor(v + 0.5)).abs()
    return (min_scale + (max_scale - min_scale) * tri).float()


def karras_sigmas(
    steps: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = RHO
) -> torch.Tensor:
    """``[steps + 1]`` float64: Karras et al. sigmas from ``sigma_max`` to ``sigma_min``, then 0
    (``sgm`` ``EDMDiscretization``)."""
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def edm_scalings(sigma: float) -> tuple[float, float, float, float]:
    """``(c_skip, c_out, c_in, c_noise)`` of ``VScalingWithEDMcNoise``."""
    s2 = sigma * sigma
    return (
        1.0 / (s2 + 1.0),
        -sigma / math.sqrt(s2 + 1.0),
        1.0 / math.sqrt(s2 + 1.0),
        0.25 * math.log(sigma),
    )


def resize_antialiased(x: torch.Tensor, size: int) -> torch.Tensor:
    """Kornia-style antialiased resize (what ``sgm``'s OpenCLIP image embedder uses): a
    Gaussian blur with ``sigma = max((factor - 1) / 2, 0.001)`` over an odd kernel of
    ``max(4 sigma, 3)`` taps (reflect padding), then bicubic interpolation with
    ``align_corners=True``."""
    h, w = x.shape[-2:]
    out = x
    for axis, factor in ((-2, h / size), (-1, w / size)):
        sigma = max((factor - 1.0) / 2.0, 0.001)
        k = int(max(4.0 * sigma, 3))
        k += 1 - k % 2
        taps = torch.arange(k, dtype=x.dtype, device=x.device) - k // 2
        kernel = torch.exp(-(taps**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        c = out.shape[1]
        if axis == -1:
            weight = kernel.view(1, 1, 1, k).expand(c, 1, 1, k)
            pad = (k // 2, k // 2, 0, 0)
        else:
            weight = kernel.view(1, 1, k, 1).expand(c, 1, k, 1)
            pad = (0, 0, k // 2, k // 2)
        out = F.conv2d(F.pad(out, pad, mode="reflect"), weight, groups=c)
    return F.interpolate(out, size=(size, size), mode="bicubic", align_corners=True)


# --------------------------------------------------------------------------------------------
# UNet with per-frame camera conditioning


class SV3DUNet(UNetSpatioTemporalConditionModel):
    """``UNetSpatioTemporalConditionModel`` whose added embedding is per frame: the camera
    vectors (:func:`camera_vectors`, ``[B, F, 1280]``) go through ``add_embedding`` and are added
    to the timestep embedding of each frame (the stock model embeds one vector per video)."""

    def forward(  # noqa: D417 - documented above
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float,
        encoder_hidden_states: torch.Tensor,
        camera: torch.Tensor,
        return_dict: bool = False,
    ) -> torch.Tensor:
        batch, frames = sample.shape[:2]
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(-1).expand(batch) if t.numel() in (1, batch) else t
        emb = self.time_embedding(self.time_proj(t.float()).to(sample.dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        cam = camera.reshape(batch * frames, -1).to(device=sample.device, dtype=emb.dtype)
        emb = emb + self.add_embedding(cam)
        sample = sample.flatten(0, 1)
        context = encoder_hidden_states.repeat_interleave(frames, dim=0)
        indicator = torch.zeros(batch, frames, dtype=sample.dtype, device=sample.device)

        sample = self.conv_in(sample)
        skips = (sample,)
        for block in self.down_blocks:
            kw = (
                {"encoder_hidden_states": context}
                if getattr(block, "has_cross_attention", False)
                else {}
            )
            sample, res = block(
                hidden_states=sample, temb=emb, image_only_indicator=indicator, **kw
            )
            skips += res
        sample = self.mid_block(
            hidden_states=sample,
            temb=emb,
            encoder_hidden_states=context,
            image_only_indicator=indicator,
        )
        for block in self.up_blocks:
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            kw = (
                {"encoder_hidden_states": context}
                if getattr(block, "has_cross_attention", False)
                else {}
            )
            sample = block(
                hidden_states=sample,
                temb=emb,
                res_hidden_states_tuple=res,
                image_only_indicator=indicator,
                **kw,
            )
        sample = self.conv_out(self.conv_act(self.conv_norm_out(sample)))
        return sample.reshape(batch, frames, *sample.shape[1:])


# --------------------------------------------------------------------------------------------
# key mapping: sgm single file -> diffusers / transformers


_RES_SPATIAL = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def _map_resblock(rest: str) -> str:
    """Inside a ``VideoResBlock``: spatial keys -> ``spatial_res_block``, ``time_stack`` ->
    ``temporal_res_block``, ``time_mixer`` stays."""
    if rest.startswith("time_mixer."):
        return rest
    prefix = "spatial_res_block."
    if rest.startswith("time_stack."):
        prefix, rest = "temporal_res_block.", rest[len("time_stack.") :]
    for old, new in _RES_SPATIAL.items():
        if rest.startswith(old + "."):
            return prefix + new + rest[len(old) :]
    raise KeyError(rest)


def _map_transformer(rest: str) -> str:
    """Inside a ``SpatialVideoTransformer``: ``time_stack`` -> ``temporal_transformer_blocks``,
    ``time_pos_embed.{0,2}`` -> ``time_pos_embed.linear_{1,2}``; the rest keeps its names."""
    if rest.startswith("time_stack."):
        return "temporal_transformer_blocks." + rest[len("time_stack.") :]
    m = re.match(r"time_pos_embed\.([02])\.(.*)", rest)
    if m:
        return f"time_pos_embed.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}"
    return rest


def unet_key_map(config: dict) -> Callable[[str], str]:
    """A function mapping an ``sgm`` VideoUNet key (without ``model.diffusion_model.``) to the
    diffusers ``UNetSpatioTemporalConditionModel`` key, for the architecture ``config``."""
    per = int(config["layers_per_block"]) + 1  # blocks per level (resnets + the resampler)
    down_attn = [t.startswith("CrossAttn") for t in config["down_block_types"]]
    up_attn = [t.startswith("CrossAttn") for t in config["up_block_types"]]
    fixed = {
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "label_emb.0.0": "add_embedding.linear_1",
        "label_emb.0.2": "add_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }

    def mapping(key: str) -> str:
        for old, new in fixed.items():
            if key.startswith(old + "."):
                return new + key[len(old) :]
        m = re.match(r"input_blocks\.(\d+)\.(\d+)\.(.*)", key)
        if m:
            i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            level, j = divmod(i - 1, per)
            if j == per - 1:  # the downsampler closing the level
                if sub == 0 and rest.startswith("op."):
                    return f"down_blocks.{level}.downsamplers.0.conv.{rest[3:]}"
                raise KeyError(key)
            if sub == 0:
                return f"down_blocks.{level}.resnets.{j}.{_map_resblock(rest)}"
            if sub == 1 and down_attn[level]:
                return f"down_blocks.{level}.attentions.{j}.{_map_transformer(rest)}"
            raise KeyError(key)
        m = re.match(r"middle_block\.(\d)\.(.*)", key)
        if m:
            sub, rest = int(m.group(1)), m.group(2)
            if sub == 1:
                return f"mid_block.attentions.0.{_map_transformer(rest)}"
            return f"mid_block.resnets.{sub // 2}.{_map_resblock(rest)}"
        m = re.match(r"output_blocks\.(\d+)\.(\d+)\.(.*)", key)
        if m:
            i, sub, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            level, j = divmod(i, per)
            if sub == 0:
                return f"up_blocks.{level}.resnets.{j}.{_map_resblock(rest)}"
            upsample_sub = 2 if up_attn[level] else 1
            if sub == upsample_sub and j == per - 1 and rest.startswith("conv."):
                return f"up_blocks.{level}.upsamplers.0.{rest}"
            if sub == 1 and up_attn[level]:
                return f"up_blocks.{level}.attentions.{j}.{_map_transformer(rest)}"
            raise KeyError(key)
        raise KeyError(key)

    return mapping


def convert_unet_state_dict(
    state: dict[str, torch.Tensor], config: dict
) -> dict[str, torch.Tensor]:
    """``model.diffusion_model.*`` tensors of an ``sgm`` checkpoint -> diffusers names."""
    mapping = unet_key_map(config)
    out = {}
    for key, value in state.items():
        if not key.startswith(UNET_PREFIX):
            continue
        short = key[len(UNET_PREFIX) :]
        try:
            out[mapping(short)] = value
        except KeyError:
            raise InputError(f"SV3D checkpoint: unexpected UNet tensor {key}") from None
    return out


def _vae_block_keys(rest: str, num_levels: int, decoder: bool) -> str:
    """LDM VAE encoder/decoder key -> diffusers ``Encoder`` / ``Decoder`` key."""
    for old, new in (
        ("norm_out.", "conv_norm_out."),
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
    ):
        if rest.startswith(old):
            return new + rest[len(old) :]
    m = re.match(r"mid\.block_([12])\.(.*)", rest)
    if m:
        return f"mid_block.resnets.{int(m.group(1)) - 1}.{_vae_resnet(m.group(2))}"
    m = re.match(r"mid\.attn_1\.(.*)", rest)
    if m:
        names = {
            "norm": "group_norm",
            "q": "to_q",
            "k": "to_k",
            "v": "to_v",
            "proj_out": "to_out.0",
        }
        part, _, tail = m.group(1).partition(".")
        return f"mid_block.attentions.0.{names[part]}.{tail}"
    m = re.match(r"(down|up)\.(\d+)\.(block|downsample|upsample)\.(.*)", rest)
    if m:
        level, what, tail = int(m.group(2)), m.group(3), m.group(4)
        blocks = "up_blocks" if decoder else "down_blocks"
        idx = num_levels - 1 - level if decoder else level
        if what == "block":
            j, _, tail = tail.partition(".")
            return f"{blocks}.{idx}.resnets.{j}.{_vae_resnet(tail)}"
        sampler = "upsamplers" if decoder else "downsamplers"
        return f"{blocks}.{idx}.{sampler}.0.{tail}"
    raise KeyError(rest)


def _vae_resnet(tail: str) -> str:
    if tail.startswith("nin_shortcut."):
        return "conv_shortcut." + tail[len("nin_shortcut.") :]
    return tail


def convert_vae_state_dict(
    state: dict[str, torch.Tensor], num_levels: int
) -> dict[str, torch.Tensor]:
    """``first_stage_model.decoder.*`` (decoder) and ``conditioner.embedders.1.encoder.{encoder,
    quant_conv}.*`` (encoder) -> one diffusers ``AutoencoderKL`` without ``post_quant_conv``.
    The 1x1-convolution attention projections become linear weights."""
    out = {}
    for key, value in state.items():
        if key.startswith(DECODER_PREFIX):
            new = "decoder." + _vae_block_keys(key[len(DECODER_PREFIX) :], num_levels, True)
        elif key.startswith(ENCODER_PREFIX + "encoder."):
            rest = key[len(ENCODER_PREFIX + "encoder.") :]
            new = "encoder." + _vae_block_keys(rest, num_levels, False)
        elif key.startswith(ENCODER_PREFIX + "quant_conv."):
            new = key[len(ENCODER_PREFIX) :]
        else:
            continue
        if ".attentions.0.to_" in new and new.endswith(".weight") and value.ndim == 4:
            value = value[:, :, 0, 0]
        out[new] = value
    return out


def convert_openclip_visual(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP ``visual.*`` tensors (``conditioner.embedders.0.open_clip.model.visual.*``) ->
    transformers ``CLIPVisionModelWithProjection`` names (fused ``in_proj`` split into q/k/v,
    ``proj`` transposed into ``visual_projection``)."""
    out = {}
    vm = "vision_model."
    for key, value in state.items():
        if not key.startswith(CLIP_PREFIX):
            continue
        k = key[len(CLIP_PREFIX) :]
        if k == "class_embedding":
            out[vm + "embeddings.class_embedding"] = value
        elif k == "positional_embedding":
            out[vm + "embeddings.position_embedding.weight"] = value
        elif k == "conv1.weight":
            out[vm + "embeddings.patch_embedding.weight"] = value
        elif k == "proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif k.startswith("ln_pre."):
            out[vm + "pre_layrnorm." + k[7:]] = value
        elif k.startswith("ln_post."):
            out[vm + "post_layernorm." + k[8:]] = value
        else:
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.*)", k)
            if not m:
                raise InputError(f"SV3D checkpoint: unexpected CLIP tensor {key}")
            layer = f"{vm}encoder.layers.{m.group(1)}."
            rest = m.group(2)
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_") :]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{layer}self_attn.{name}_proj.{kind}"] = part.contiguous()
                continue
            names = {
                "attn.out_proj.": "self_attn.out_proj.",
                "ln_1.": "layer_norm1.",
                "ln_2.": "layer_norm2.",
                "mlp.c_fc.": "mlp.fc1.",
                "mlp.c_proj.": "mlp.fc2.",
            }
            for old, new in names.items():
                if rest.startswith(old):
                    out[layer + new + rest[len(old) :]] = value
                    break
            else:
                raise InputError(f"SV3D checkpoint: unexpected CLIP tensor {key}")
    return out


# --------------------------------------------------------------------------------------------
# pipeline


@dataclass
class SV3DOutput:
    """``frames``: ``[21, 3, H, W]`` float in [0, 1], SV3D's output order (frame 20 = input)."""

    frames: torch.Tensor

    def frame_images(self) -> list:
        return [to_pil(f) for f in self.frames]


def _resolve_checkpoint(path: Path) -> tuple[Path, dict]:
    config: dict = {}
    if path.is_dir():
        cfg = path / CONFIG_NAME
        if cfg.is_file():
            try:
                config = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise InputError(f"{cfg}: cannot read ({e})") from None
        files = sorted(path.glob("*.safetensors"))
        named = path / CHECKPOINT_NAME
        if named.is_file():
            path = named
        elif len(files) == 1:
            path = files[0]
        else:
            raise InputError(f"{path}: no {CHECKPOINT_NAME} in the folder; pass the SV3D_p file")
    if not path.is_file():
        raise InputError(
            f"{path}: no such file; pass sv3d_p.safetensors (geolrm weights download sv3d-p)"
        )
    return path, config


class SV3DPipeline:
    """SV3D_p (see the module docstring). Build it with :meth:`from_pretrained`."""

    def __init__(self, unet, vae, image_encoder, device="cpu", dtype=torch.float32, offload=False):
        self.unet, self.vae, self.image_encoder = unet, vae, image_encoder
        self.dtype = dtype
        self.placement = Placement(device, offload)
        self.device = self.placement.device
        self.placement.place(unet, vae, image_encoder)

    @classmethod
    def from_pretrained(
        cls,
        path: PathLike,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ) -> SV3DPipeline:
        """Load the single-file ``sv3d_p.safetensors`` (or a folder holding it, optionally with
        an ``sv3d_config.json`` of ``unet`` / ``vae`` / ``image_encoder`` config overrides for
        small test models). The UNet and the CLIP encoder take ``dtype``; the VAE stays fp32."""
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

        ckpt, overrides = _resolve_checkpoint(Path(path))
        unet_cfg = {**UNET_CONFIG, **overrides.get("unet", {})}
        vae_cfg = {**VAE_CONFIG, **overrides.get("vae", {})}
        clip_cfg = {**CLIP_CONFIG, **overrides.get("image_encoder", {})}
        try:
            with safe_open(str(ckpt), framework="pt") as fh:
                keys = list(fh.keys())

                def take(prefix: str) -> dict[str, torch.Tensor]:
                    return {k: fh.get_tensor(k) for k in keys if k.startswith(prefix)}

                unet_sd = convert_unet_state_dict(take(UNET_PREFIX), unet_cfg)
                vae_sd = convert_vae_state_dict(
                    {**take(DECODER_PREFIX), **take(ENCODER_PREFIX)},
                    len(vae_cfg["block_out_channels"]),
                )
                clip_sd = convert_openclip_visual(take(CLIP_PREFIX))
        except InputError:
            raise
        except Exception as e:  # not a safetensors file, truncated, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"{ckpt}: cannot read the SV3D checkpoint ({first})") from None
        for what, sd, prefix in (
            ("UNet", unet_sd, UNET_PREFIX),
            ("VAE decoder", vae_sd, DECODER_PREFIX),
            ("CLIP image encoder", clip_sd, CLIP_PREFIX),
        ):
            if not sd:
                raise InputError(
                    f"{ckpt}: no {what} tensors ({prefix}*); is this sv3d_p.safetensors?"
                )
        unet = assign_weights(
            build_on_meta(SV3DUNet, unet_cfg), unet_sd, f"SV3D UNet ({ckpt})", dtype
        )
        vae = assign_weights(
            build_on_meta(AutoencoderKL, vae_cfg), vae_sd, f"SV3D VAE ({ckpt})", torch.float32
        )
        with torch.device("meta"):
            clip = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_cfg))
        # position_ids is a non-persistent buffer: rebuild it on the CPU
        emb = clip.vision_model.embeddings
        if hasattr(emb, "position_ids"):
            emb.register_buffer(
                "position_ids", torch.arange(emb.num_positions).expand((1, -1)), persistent=False
            )
        clip = assign_weights(clip, clip_sd, f"SV3D CLIP image encoder ({ckpt})", dtype)
        return cls(unet, vae, clip, device=device, dtype=dtype, offload=offload)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def num_frames(self) -> int:
        return int(self.unet.config.num_frames)

    # -- conditioning -------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """``[1, 1, D]`` CLIP embedding of ``x`` (``[1, 3, H, W]`` in [-1, 1]): antialiased
        bicubic resize to the encoder size (:func:`resize_antialiased`), to [0, 1], CLIP
        normalisation."""
        size = int(self.image_encoder.config.image_size)
        y = resize_antialiased(x.float(), size)
        y = (y + 1.0) / 2.0
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        y = (y - mean) / std
        enc = self.image_encoder
        with self.placement.use(enc):
            emb = enc(y.to(self.device, enc.dtype)).image_embeds
        return emb[:, None, :].to(self.dtype)

    @torch.no_grad()
    def encode_condition(
        self, x: torch.Tensor, generator, cond_aug: float = COND_AUG
    ) -> torch.Tensor:
        """``[1, 4, h, w]`` posterior mode of ``x + cond_aug * noise`` (no scaling factor)."""
        noisy = x + cond_aug * randn(x.shape, generator, "cpu", torch.float32)
        with self.placement.use(self.vae):
            lat = self.vae.encode(noisy.to(self.device)).latent_dist.mode()
        return lat.to(self.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 7) -> torch.Tensor:
        """``[F, 4, h, w]`` -> ``[F, 3, H, W]`` in [0, 1], ``chunk`` frames at a time."""
        out = []
        with self.placement.use(self.vae):
            for part in latents.split(max(int(chunk), 1)):
                z = part.to(self.device, torch.float32) / self.vae.config.scaling_factor
                x = self.vae.decode(z, return_dict=False)[0]
                out.append(((x + 1.0) / 2.0).clamp(0, 1).float().cpu())
        return torch.cat(out)

    # -- sampling -----------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        image,
        num_inference_steps: int = DEFAULT_STEPS,
        max_guidance_scale: float = 2.5,
        min_guidance_scale: float = 1.0,
        elevation_deg: float = 10.0,
        cond_aug: float = COND_AUG,
        seed: int | None = 23,
        generator: torch.Generator | None = None,
        size: int = DEFAULT_SIZE,
        decode_chunk: int = 7,
        replace_last: bool = True,
        on_step: Callable[[int, int], None] | None = None,
    ) -> SV3DOutput:
        """21 orbit frames of the object in ``image`` (RGB on white, resized to ``size``).

        Args:
            max_guidance_scale / min_guidance_scale: the triangle's peak (frame 10) and ends.
            elevation_deg: camera elevation of every frame.
            replace_last: put the input photo in as the last frame (its own view), as the
                official script does.
        """
        check_sampling(num_inference_steps, size, latent_multiple(self), "SV3D input size")
        gen = generator if generator is not None else make_generator(seed)
        im = image.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)[None]
        x = x / 127.5 - 1.0  # [-1, 1]
        n = self.num_frames
        clip = self.encode_image(x)
        cond = self.encode_condition(x, gen, cond_aug)
        cam = camera_vectors(elevation_deg, azimuths_rad(n), cond_aug, n).to(
            self.device, self.dtype
        )
        cam = torch.stack([cam, cam])  # the same vectors for both branches
        context = torch.cat([torch.zeros_like(clip), clip]).to(self.device)
        concat = (
            torch.cat([torch.zeros_like(cond), cond])[:, None]
            .expand(-1, n, -1, -1, -1)
            .to(self.device)
        )
        scale = triangle_guidance(n, max_guidance_scale, min_guidance_scale).view(1, n, 1, 1, 1)
        scale = scale.to(self.device)

        sigmas = karras_sigmas(num_inference_steps)
        h = w = size // self.vae_scale_factor
        shape = (1, n, self.unet.config.out_channels, h, w)
        latents = randn(shape, gen, self.device, torch.float32) * math.sqrt(
            1.0 + float(sigmas[0]) ** 2
        )
        with self.placement.use(self.unet):
            for i in range(num_inference_steps):
                sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
                c_skip, c_out, c_in, c_noise = edm_scalings(sigma)
                x_in = torch.cat([latents, latents]) * c_in
                x_in = torch.cat([x_in.to(self.dtype), concat], dim=2)
                t = torch.full((2,), c_noise, device=self.device)
                out = self.unet(x_in, t, context, cam).float()
                denoised = out * c_out + torch.cat([latents, latents]) * c_skip
                d_u, d_c = denoised.chunk(2)
                denoised = d_u + scale * (d_c - d_u)
                latents = latents + (latents - denoised) / sigma * (nxt - sigma)
                if on_step is not None:
                    on_step(i + 1, num_inference_steps)
        frames = self.decode(latents[0], decode_chunk)
        if replace_last:
            frames[-1] = ((x[0] + 1.0) / 2.0).clamp(0, 1)
        return SV3DOutput(frames=frames)
