"""GeoLRM (Zhang et al. 2024): posed views -> proposal network -> anchors -> 3D Gaussians.

One readable file, top to bottom in the order data flows:

1. image encoder: normalised RGB + Plücker rays -> low-level conv branch and DINOv2 branch,
   concatenated into a two-level feature pyramid per view;
2. geometry-aware transformer blocks (self-attention with 3D RoPE, deformable cross-attention
   into every view, SwiGLU FFN), shared by both stages;
3. proposal network (the official "serializer"): a dense coarse grid of tokens -> occupancy
   logits on a fine grid -> anchors (occupied cells);
4. reconstruction transformer (the official "lrm_generator") on the anchors -> latents;
5. Gaussian decoder (``renderer.get_gaussians``): latents -> gs_per_token Gaussians per anchor.

Compatibility with the released weights is the point: module names give exactly the official
state-dict keys (``serializer.*``, ``lrm_generator.*``, DINOv2 in transformers-4.34 naming), and
every computation follows the official fp32 inference path (commit da3f30fb, configs/geolrm.yaml),
quirks included; they are marked ``QUIRK`` below. Checked against a golden fixture of the
official code (tests/fixtures/geolrm_tiny) to ~1e-6.

Shapes: B batch, V views, H x W image size, S tokens/anchors, D model width, C encoder feature
width, Hc heads, Lv=2 feature levels, P deformable points per level, G fine grid size.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from pipelines import hugepages
from pipelines.errors import InputError
from pipelines.geolrm.checkpoint import load_geolrm_state_dict
from pipelines.geolrm.deformable import sample_views
from pipelines.geolrm.dinov2_keys import dinov2_key_to_installed, dinov2_key_to_official
from pipelines.numba_jit import cached_njit
from pipelines.splats.gaussians import Gaussians

# ============================================================================ configs

#: DINOv2-base, as used by configs/geolrm.yaml (``facebook/dinov2-base``). Dinov2Config fields.
DINOV2_BASE: dict = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 14,
    "image_size": 518,
    "mlp_ratio": 4,
    "layerscale_value": 1.0,
    "use_swiglu_ffn": False,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu",
    "qkv_bias": True,
}

ATTENTION_MODES = ("official", "standard")


@dataclass
class ProposalConfig:
    """Proposal network (``serializer`` in configs/geolrm.yaml). Defaults = released model."""

    encoder_feat_dim: int = 384
    transformer_dim: int = 384
    transformer_layers: int = 6
    transformer_heads: int = 16
    grid_size: int = 128  # fine occupancy grid G
    token_res: int = 8  # each coarse token predicts token_res^3 fine cells
    num_deform_points: int = 8
    scale: float = 0.5  # xyz_scale of the coarse tokens' RoPE positions
    max_seq_len: int = 8192  # anchors kept (random subset above, zero padding below)
    attention: str | None = None  # "official" | "standard"; None: from use_bf16
    use_bf16: bool = False  # official flag: True meant flash (standard) attention
    # accepted for config compatibility, no effect at inference:
    encoder_freeze: bool = False
    encoder_model_name: str = "facebook/dinov2-base"
    ckpt_path: str | None = None


@dataclass
class ReconstructionConfig:
    """Reconstruction model (``lrm_generator`` in configs/geolrm.yaml). Defaults = released."""

    encoder_feat_dim: int = 384
    transformer_dim: int = 768
    transformer_layers: int = 16
    transformer_heads: int = 16
    grid_size: int = 128  # only sets the RoPE position scale
    num_deform_points: int = 8
    gs_per_token: int = 32
    offset_max: float = 0.2
    scale_max: float = 0.02
    xyz_scale: float = 1.0  # run scripts: 1.0 (default); the Lightning forward passes 0.5
    attention: str | None = None
    use_bf16: bool = False
    use_sh: bool = False  # only False (rgb) is supported, as the released model
    dropout: float = 0.0  # training only
    encoder_freeze: bool = False
    encoder_model_name: str = "facebook/dinov2-base"


@dataclass
class GeoLRMConfig:
    """Whole model: the DINOv2 config (shared layout of both encoders) + both stages + options.

    Runtime options:
        seed: seed of the generator drawing the random anchor subset when the proposal finds
            >= max_seq_len cells (the official scripts seed the global RNG with 42).
        compat_padding: pad the anchors with (0,0,0) rows up to max_seq_len and run them through
            the reconstruction transformer, as the official scripts do (changes the real rows'
            latents, since the official attention mixes rows); False runs the real anchors only.
        force_anchors: take exactly this many anchors, the top logits (benchmarks with random
            weights); None thresholds logit > 0 as the official code.
        view_chunk: views per encoder batch (memory bound only; results identical).
    """

    dino: dict = field(default_factory=lambda: dict(DINOV2_BASE))
    serializer: ProposalConfig = field(default_factory=ProposalConfig)
    lrm_generator: ReconstructionConfig = field(default_factory=ReconstructionConfig)
    seed: int = 42
    compat_padding: bool = True
    force_anchors: int | None = None
    view_chunk: int = 4

    @classmethod
    def from_dict(cls, config: dict | GeoLRMConfig | None = None, **options) -> GeoLRMConfig:
        """Build from a dict laid out like configs/geolrm.yaml (``dino``, ``serializer``,
        ``lrm_generator``; None = the released model), then apply options.

        Options: any top-level field (seed, compat_padding, force_anchors, view_chunk), plus
        ``max_seq_len`` (serializer), ``attention`` (both stages) and ``xyz_scale`` (generator).
        """
        if isinstance(config, GeoLRMConfig):
            config = config.to_dict()
        config = dict(config or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise InputError(
                f"unknown GeoLRM config section(s) {unknown}; expected {sorted(known)}"
            )
        dino = dict(DINOV2_BASE)
        dino.update(config.pop("dino", None) or {})
        ser = _dataclass_from_dict(ProposalConfig, config.pop("serializer", None), "serializer")
        gen = _dataclass_from_dict(
            ReconstructionConfig, config.pop("lrm_generator", None), "lrm_generator"
        )
        cfg = cls(dino=dino, serializer=ser, lrm_generator=gen, **config)
        for name, value in options.items():
            if value is None and name != "force_anchors":
                continue
            if name == "max_seq_len":
                cfg.serializer.max_seq_len = int(value)
            elif name == "attention":
                cfg.serializer.attention = cfg.lrm_generator.attention = value
            elif name == "xyz_scale":
                cfg.lrm_generator.xyz_scale = float(value)
            elif name in known - {"dino", "serializer", "lrm_generator"}:
                setattr(cfg, name, value)
            else:
                raise InputError(
                    f"unknown GeoLRM option {name!r}; use max_seq_len, attention, xyz_scale, "
                    "seed, compat_padding, force_anchors or view_chunk"
                )
        cfg.validate()
        return cfg

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        for name, c in (("serializer", self.serializer), ("lrm_generator", self.lrm_generator)):
            if c.transformer_dim % c.transformer_heads:
                raise InputError(f"{name}.transformer_dim must be a multiple of transformer_heads")
            if (c.transformer_dim // c.transformer_heads) % 6:
                raise InputError(f"{name}: head dim must be a multiple of 6 (3D RoPE)")
            if attention_mode(c) not in ATTENTION_MODES:
                raise InputError(f"{name}.attention must be one of {ATTENTION_MODES}")
        s = self.serializer
        if s.grid_size % s.token_res:
            raise InputError("serializer.grid_size must be a multiple of serializer.token_res")
        if s.max_seq_len < 1:
            raise InputError("max_seq_len must be >= 1")
        if self.lrm_generator.use_sh:
            raise InputError(
                "lrm_generator.use_sh=true is not supported (the released model uses rgb)"
            )
        if self.force_anchors is not None and self.force_anchors < 1:
            raise InputError("force_anchors must be a positive number of anchors")


def _dataclass_from_dict(cls, values: dict | None, section: str):
    values = dict(values or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"unknown {section} config key(s) {unknown}; known: {sorted(names)}")
    return cls(**values)


def attention_mode(c: ProposalConfig | ReconstructionConfig) -> str:
    """The self-attention mode of a stage: explicit, else what its use_bf16 flag ran."""
    if c.attention is not None:
        return c.attention
    return "standard" if c.use_bf16 else "official"


def ffn_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """SwiGLU hidden size of the official ModelArgs: 256 * ceil(int(2 * 4D / 3) / 256)."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# ============================================================================ cameras

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation. images: [..., 3, H, W] in [0,1] -> same shape."""
    mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
    return (images - mean) / std


def fp32_geometry(fn):
    """Run ``fn`` with autocast off: under bf16/fp16 autocast, camera geometry (rays,
    projections, sampling locations) would otherwise lose pixels to 8-bit mantissas. The
    wrapped functions cast their inputs to fp32 themselves."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = next((a.device.type for a in args if isinstance(a, torch.Tensor)), "cpu")
        with torch.autocast(dev, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


@fp32_geometry
def ray_embedding(c2ws: torch.Tensor, Ks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker rays of every pixel centre, as the official ``get_ray_embedding``.

    QUIRKS (reproduced): the pixel focal F = K[0,0]·W serves both axes, the principal point is
    fixed at the image centre, d is not normalised, the moment is o × d.

    Args:
        c2ws: [N, 4, 4] OpenGL camera-to-world.
        Ks: [N, 3, 3] intrinsics normalised by image size.
    Returns:
        [N, 6, H, W]: (d_x, d_y, d_z, m_x, m_y, m_z), d = R·d_cam, m = o × d.
    """
    c2ws, Ks = c2ws.float(), Ks.float()
    focal = Ks[:, 0, 0] * width  # [N]
    i = torch.arange(width, dtype=torch.float32, device=c2ws.device)
    j = torch.arange(height, dtype=torch.float32, device=c2ws.device)
    jj, ii = torch.meshgrid(j, i, indexing="ij")  # [H, W]
    f = focal.view(-1, 1, 1)
    x = (ii + 0.5 - width / 2) / f
    y = -(jj + 0.5 - height / 2) / f  # OpenGL: y up
    z = torch.full_like(x, -1.0)  # OpenGL: looking along -z
    d_cam = torch.stack([x, y, z], dim=-1)  # [N, H, W, 3]
    d = d_cam @ c2ws[:, None, :3, :3].transpose(-1, -2)  # d = R d_cam
    o = c2ws[:, None, None, :3, 3].expand_as(d)
    m = torch.cross(o, d, dim=-1)
    return torch.cat([d, m], dim=-1).permute(0, 3, 1, 2).contiguous()


@fp32_geometry
def projection_matrices(c2ws: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """P = K · inverse(c2w)[:3, :4]. c2ws [B,V,4,4], Ks [B,V,3,3] -> [B,V,3,4]."""
    w2c = torch.linalg.inv(c2ws.float())
    return Ks.float() @ w2c[..., :3, :4]


@fp32_geometry
def project_points(xyz: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Reference points of the deformable attention: normalised uv of each point in each view.

    QUIRK: u <- 1 - u after the perspective division (the official "blender to opencv"); with
    OpenGL cameras this gives u = (i+0.5)/W, v = (j+0.5)/H at pixel centres. No clamping, no
    visibility test.

    Args:
        xyz: [B, S, 3] world points.
        proj: [B, V, 3, 4] from :func:`projection_matrices`.
    Returns:
        [B, V, S, 2] (u, v).
    """
    xyz = xyz.float()
    homo = torch.cat([xyz, torch.ones_like(xyz[..., :1])], dim=-1)  # [B, S, 4]
    abc = homo[:, None] @ proj.float().transpose(-1, -2)  # [B, V, S, 3]
    uv = abc[..., :2] / abc[..., 2:3]
    return torch.stack([1 - uv[..., 0], uv[..., 1]], dim=-1)


def xyz_to_index(xyz: torch.Tensor, xyz_scale: float, grid_size: int) -> torch.Tensor:
    """Integer RoPE positions: int64 truncation of (xyz/xyz_scale + 1)·(G-1)/2. [..,3] -> [..,3]."""
    return ((xyz / xyz_scale + 1) * (grid_size - 1) / 2).long()


# ============================================================================ DINOv2


def interpolate_pos_embed_4341(pos_embed: torch.Tensor, n_h: int, n_w: int) -> torch.Tensor:
    """DINOv2 position-embedding resize exactly as transformers 4.34.1 (the weights' version).

    QUIRK: 4.34.1 calls bicubic (A=-0.75, align_corners=False, clamped taps) with
    ``scale_factor=(n+0.1)/n0`` instead of ``size=n``: the output size is still n, but the source
    coordinate of output index i is (i+0.5)·n0/(n+0.1) - 0.5. Newer transformers pass size=n,
    which shifts the features (max 0.17 on the tiny fixture), so this is computed here.

    Args:
        pos_embed: [1, 1 + n0*n0, C] (CLS first).
        n_h, n_w: patch grid of the input.
    Returns:
        [1, 1 + n_h*n_w, C]; the CLS entry unchanged.
    """
    n0 = int(math.sqrt(pos_embed.shape[1] - 1))
    if n_h * n_w == n0 * n0 and n_h == n_w:
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, n0, n0, dim).permute(0, 3, 1, 2)
    sf = (float((n_h + 0.1) / math.sqrt(n0 * n0)), float((n_w + 0.1) / math.sqrt(n0 * n0)))
    patch_pos = F.interpolate(
        patch_pos.float(), scale_factor=sf, mode="bicubic", align_corners=False
    ).to(pos_embed.dtype)
    if patch_pos.shape[-2:] != (n_h, n_w):  # cannot happen with +0.1, kept as a guard
        raise RuntimeError("position-embedding interpolation gave the wrong size")
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, n_h * n_w, dim)
    return torch.cat([cls_pos, patch_pos], dim=1)


def build_dinov2(dino: dict) -> nn.Module:
    """A randomly initialised ``transformers.Dinov2Model`` built from a config (no download)."""
    from transformers import Dinov2Config, Dinov2Model

    return Dinov2Model(Dinov2Config(**dino))


# ============================================================================ image encoder


@dataclass
class ImageFeatures:
    """Two-level per-view feature maps, flattened and concatenated (low level first).

    Attributes:
        feats: [B, V, L, C], L = h_l·w_l + h_h·w_h.
        spatial_shapes: ((h_l, w_l), (h_h, w_h)).
    """

    feats: torch.Tensor
    spatial_shapes: tuple[tuple[int, int], ...]

    @property
    def spatial_shapes_tensor(self) -> torch.Tensor:
        """[Lv, 2] int64, (h, w) per level."""
        return torch.tensor(self.spatial_shapes, dtype=torch.int64)

    @property
    def level_start_index(self) -> torch.Tensor:
        """[Lv] int64: offset of each level in the token axis."""
        sizes = [h * w for h, w in self.spatial_shapes]
        return torch.tensor([0] + sizes[:-1], dtype=torch.int64).cumsum(0)


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


def contiguous_grad(x: torch.Tensor) -> torch.Tensor:
    """``x``, with its gradient made contiguous before it reaches the layers below.

    Works around a PyTorch CPU bug (seen in 2.13): through Conv2d -> BatchNorm2d (eval), a
    gradient with channels-last strides (what ``flatten(2).transpose(1, 2)`` sends back) gives
    a batch of ONE wrong conv weight gradients (max error 108 against a float64 reference of
    scale 83, ``tests/test_train.py``); batches of two and more are right. Forward: a no-op.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _ContiguousGrad.apply(x)


class ImageEncoder(nn.Module):
    """Official ``DinoWrapper``: DINOv2 + deconv branch and the low-level conv branch.

    State-dict keys: ``model.*`` (DINOv2, always in the official transformers-4.x naming),
    ``deconv.{0,1}.*``, ``low_level_encoder.{0,1}.*``.
    """

    def __init__(self, dino: dict, feat_dim: int, view_chunk: int = 4):
        super().__init__()
        self.model = build_dinov2(dino)
        self.patch_size = int(dino["patch_size"])
        hidden = int(dino["hidden_size"])
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(hidden, feat_dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(feat_dim),
        )
        self.low_level_encoder = nn.Sequential(
            nn.Conv2d(9, feat_dim, kernel_size=4, stride=4, bias=False),
            nn.BatchNorm2d(feat_dim),
        )
        self.view_chunk = view_chunk
        # DINOv2 keys are exposed/accepted in the official (transformers 4.x) naming whatever
        # transformers is installed.
        self.register_state_dict_post_hook(_dino_state_dict_to_official)
        self.register_load_state_dict_pre_hook(_dino_load_to_installed)

    def dino_feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """DINOv2 ``feature_maps[-1]`` (transformers 4.34.1 Dinov2Backbone semantics).

        Last layer -> final LayerNorm -> drop CLS -> map. QUIRK: 4.34.1 reshapes the tokens as
        (W/p, H/p), which only matters for non-square inputs.

        Args:
            x: [N, 3, H, W] normalised images.
        Returns:
            [N, C_dino, W/14, H/14].
        """
        emb = self.model.embeddings
        patches = emb.patch_embeddings.projection(x)  # [N, C, h, w]
        n_h, n_w = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        cls = emb.cls_token.expand(x.shape[0], -1, -1)
        hidden = torch.cat([cls, tokens], dim=1)
        hidden = hidden + interpolate_pos_embed_4341(emb.position_embeddings, n_h, n_w)
        for layer in self.model.encoder.layer:
            out = layer(hidden)
            hidden = out[0] if isinstance(out, tuple) else out
        hidden = self.model.layernorm(hidden)[:, 1:]
        h_img, w_img = x.shape[-2:]
        p = self.patch_size
        hidden = hidden.reshape(x.shape[0], w_img // p, h_img // p, -1)
        return hidden.permute(0, 3, 1, 2).contiguous()

    def forward(self, images: torch.Tensor, c2ws: torch.Tensor, Ks: torch.Tensor) -> ImageFeatures:
        """Encode every view.

        Args:
            images: [B, V, 3, H, W] RGB in [0, 1].
            c2ws: [B, V, 4, 4] OpenGL camera-to-world.
            Ks: [B, V, 3, 3] normalised intrinsics.
        Returns:
            :class:`ImageFeatures` with feats [B, V, h_l·w_l + h_h·w_h, C].
        """
        B, V, _, H, W = images.shape
        x_all = images.reshape(B * V, 3, H, W).float()
        c2w_all, k_all = c2ws.reshape(B * V, 4, 4), Ks.reshape(B * V, 3, 3)
        feats = shapes = None
        for s in range(0, B * V, self.view_chunk):
            e = min(B * V, s + self.view_chunk)
            x = normalize_images(x_all[s:e])
            rays = ray_embedding(c2w_all[s:e], k_all[s:e], H, W)
            low = self.low_level_encoder(torch.cat([x, rays], dim=1))  # [n, C, H/4, W/4]
            del rays
            high = self.deconv(self.dino_feature_map(x))  # [n, C, 2h, 2w]
            low, high = contiguous_grad(low), contiguous_grad(high)
            if feats is None:
                shapes = (tuple(low.shape[-2:]), tuple(high.shape[-2:]))
                length = low.shape[-2] * low.shape[-1] + high.shape[-2] * high.shape[-1]
                feats = x.new_empty(B * V, length, low.shape[1])
            n_low = low.shape[-2] * low.shape[-1]
            feats[s:e, :n_low] = low.flatten(2).transpose(1, 2)
            feats[s:e, n_low:] = high.flatten(2).transpose(1, 2)
        return ImageFeatures(feats.view(B, V, -1, feats.shape[-1]), shapes)


def _dino_state_dict_to_official(module, state_dict, prefix, local_metadata) -> None:
    """state_dict post-hook: rename DINOv2 keys under ``prefix + 'model.'`` to 4.x naming."""
    sub = prefix + "model."
    # this module's subtree is the tail of the dict: re-insert it renamed, in the same order
    items = [(k, state_dict.pop(k)) for k in [k for k in state_dict if k.startswith(prefix)]]
    for k, v in items:
        if k.startswith(sub):
            k = sub + dinov2_key_to_official(k[len(sub) :])
        state_dict[k] = v


def _dino_load_to_installed(module, state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: accept DINOv2 keys in 4.x or 5.x naming."""
    sub = prefix + "model."
    for k in [k for k in state_dict if k.startswith(sub)]:
        new = sub + dinov2_key_to_installed(k[len(sub) :])
        if new != k:
            state_dict[new] = state_dict.pop(k)


# ============================================================================ transformer parts


class RMSNorm(nn.Module):
    """x·(mean(x²) + eps)^(-1/2)·w in fp32; eps 1e-5 (ModelArgs.norm_eps of the official code)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., D] -> [..., D]."""
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1·x) ⊙ w3·x), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., D] -> [..., D]."""
        h = F.silu(self.w1(x))
        return self.w2(h.mul_(self.w3(x)) if not h.requires_grad else h * self.w3(x))


def rope3d(x: torch.Tensor, pos: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """3D rotary embedding with the semantics of the official ``curope3d`` CUDA kernel.

    Each head vector (Dh = 6Q) is cut into three thirds of width 2Q, rotated with the x, y and
    z positions respectively (the kernel's comment says Z,Y,X; its indexing is x,y,z). Inside a
    third, u = [0, Q) and v = [Q, 2Q) (half split, not interleaved):
    u' = u·cos - v·sin, v' = v·cos + u·sin, angle_j = pos·base^(-j/Q) in fp32.

    Args:
        x: [B, S, H, Dh] queries or keys.
        pos: [B, S, 3] integer positions.
    Returns:
        [B, S, H, Dh] rotated (a new tensor).
    """
    B, S, H, Dh = x.shape
    q = Dh // 6
    inv_freq = 1.0 / (base ** (torch.arange(q, dtype=torch.float32, device=x.device) / q))
    angle = pos.float()[..., None] * inv_freq  # [B, S, 3, Q]
    cos, sin = angle.cos()[:, :, None], angle.sin()[:, :, None]  # [B, S, 1, 3, Q]
    xr = x.reshape(B, S, H, 3, 2, q)
    u, v = xr[..., 0, :], xr[..., 1, :]
    out = torch.stack([u * cos - v * sin, v * cos + u * sin], dim=-2)
    return out.reshape(B, S, H, Dh).to(x.dtype)


class SelfAttention(nn.Module):
    """Self-attention with 3D RoPE on q and k. Keys: wq, wk, wv, wo (no biases).

    Modes:
        ``official``: the fp32 branch the released config runs. For each token separately an
            H×H head-to-head attention, o[s,h] = Σ_g softmax_g(<q[s,h], k[s,g]>/√Dh)·v[s,g];
            then o [B,S,H,Dh] is transposed to [B,H,S,Dh] and re-viewed as [B,S,H·Dh] (QUIRK:
            this scrambles tokens: output row r, chunk c holds o[(rH+c) mod S, (rH+c) // S]).
            Tokens never attend to each other and RoPE cancels; results depend on S and order.
        ``standard``: true multi-head attention across tokens (what the official bf16/flash
            branch computes), with 3D RoPE, via ``F.scaled_dot_product_attention``.
    """

    def __init__(self, dim: int, heads: int, mode: str = "official"):
        super().__init__()
        self.heads, self.head_dim, self.mode = heads, dim // heads, mode
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, dim, bias=False)
        self.wv = nn.Linear(dim, dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x: [B, S, D], pos: [B, S, 3] int -> [B, S, D] (after wo)."""
        B, S, D = x.shape
        q = rope3d(self.wq(x).view(B, S, self.heads, self.head_dim), pos)
        k = rope3d(self.wk(x).view(B, S, self.heads, self.head_dim), pos)
        v = self.wv(x).view(B, S, self.heads, self.head_dim)
        if self.mode == "official":
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)  # [B,S,H,H]
            attn = F.softmax(scores.float(), dim=-1).type_as(q)
            o = torch.matmul(attn, v)  # [B, S, H, Dh]
            o = o.transpose(1, 2).contiguous().view(B, S, D)  # QUIRK: the scramble
        else:
            o = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            )
            o = o.transpose(1, 2).reshape(B, S, D)
        return self.wo(o)


def deformable_sample(
    value: torch.Tensor,
    spatial_shapes: tuple[tuple[int, int], ...],
    reference: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable sampling with the mmcv reference semantics.

    Location of point p of head h at level l: loc = ref + offset/(W_l, H_l) (normalised).
    Each is sampled bilinearly at pixel (x·W_l - 0.5, y·H_l - 0.5) with zeros outside, exactly
    ``grid_sample(align_corners=False, padding_mode='zeros')`` on 2·loc - 1, and the samples are
    summed with the attention weights over levels × points.

    One view; :func:`deformable_sample_views` samples all views at once. On CPU a numba kernel
    does it (no per-point intermediates); with autograd on and an input requiring gradients the
    differentiable all-view kernel (``pipelines.geolrm.deformable``) with V = 1. On other
    devices a torch version (one ``embedding_bag`` over a channels-last table).

    Args:
        value: [B, L, Hc, C] per-head values, L = Σ h_l·w_l (levels concatenated).
        spatial_shapes: (h, w) per level.
        reference: [B, S, 2] normalised (u, v) reference point of each query.
        offsets: [B, S, Hc, Lv, P, 2] offsets in pixels of each level, (x, y).
        weights: [B, S, Hc, Lv, P] attention weights.
    Returns:
        [B, S, Hc·C], channel = head·C + c.
    """
    if value.device.type == "cpu" and value.dtype == torch.float32:
        inputs = (value, reference, offsets, weights)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            out = deformable_sample_views(
                value[:, None], spatial_shapes, reference[:, None], offsets, weights
            )
            return out[:, 0]
        return _deformable_sample_numba(value, spatial_shapes, reference, offsets, weights)
    return _deformable_sample_torch(value, spatial_shapes, reference, offsets, weights)


@fp32_geometry
def deformable_sample_views(
    value: torch.Tensor,
    spatial_shapes: tuple[tuple[int, int], ...],
    reference: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`deformable_sample` of every view in one operation, differentiable (fp32 whatever
    the inputs; the result has ``value``'s dtype).

    Args:
        value: [B, V, L, Hc, C] per-head values of each view.
        spatial_shapes: (h, w) per level.
        reference: [B, V, S, 2] normalised (u, v) reference points per view.
        offsets: [B, S, Hc, Lv, P, 2], weights: [B, S, Hc, Lv, P]: shared by all views.
    Returns:
        [B, V, S, Hc·C].
    """
    out = sample_views(
        value.float(), spatial_shapes, reference.float(), offsets.float(), weights.float()
    )
    return out.to(value.dtype)


@fp32_geometry
def _deformable_sample_torch(value, spatial_shapes, reference, offsets, weights):
    """Torch version: the four taps × attention weights become per-sample weights of one
    ``embedding_bag`` over the channels-last value table (in fp32 whatever the inputs; the
    result has ``value``'s dtype)."""
    out_dtype = value.dtype
    value, reference, offsets, weights = (t.float() for t in (value, reference, offsets, weights))
    B, L, Hc, C = value.shape
    S = reference.shape[1]
    wh = offsets.new_tensor([[w, h] for h, w in spatial_shapes])
    locations = reference[:, :, None, None, None, :] + offsets / wh[:, None, :]
    table = value.permute(0, 2, 1, 3).reshape(B * Hc * L, C)
    itype = torch.int32 if B * Hc * L < 2**31 else torch.int64
    base = torch.arange(B * Hc, device=value.device, dtype=itype).view(B, 1, Hc, 1) * L
    idx_all, w_all = [], []
    start = 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        a = weights[:, :, :, lvl]  # [B, S, Hc, P]
        grid = locations[:, :, :, lvl] * 2 - 1
        ix = ((grid[..., 0] + 1) * w - 1) / 2
        iy = ((grid[..., 1] + 1) * h - 1) / 2
        # far-away / non-finite points: park them outside (all taps then have zero weight)
        ix = torch.nan_to_num(ix, nan=-2.0, posinf=w + 1.0, neginf=-2.0).clamp_(-2.0, w + 1.0)
        iy = torch.nan_to_num(iy, nan=-2.0, posinf=h + 1.0, neginf=-2.0).clamp_(-2.0, h + 1.0)
        x0, y0 = ix.floor(), iy.floor()
        x1, y1 = x0 + 1, y0 + 1
        wx0, wx1, wy0, wy1 = x1 - ix, ix - x0, y1 - iy, iy - y0
        vx0, vx1 = (x0 >= 0) & (x0 <= w - 1), (x1 >= 0) & (x1 <= w - 1)
        vy0, vy1 = (y0 >= 0) & (y0 <= h - 1), (y1 >= 0) & (y1 <= h - 1)
        xi0, xi1 = x0.to(itype), x1.to(itype)
        yi0, yi1 = y0.to(itype) * w, y1.to(itype) * w
        off = base + start
        for xi, yi, vx, vy, wx, wy in (
            (xi0, yi0, vx0, vy0, wx0, wy0),
            (xi1, yi0, vx1, vy0, wx1, wy0),
            (xi0, yi1, vx0, vy1, wx0, wy1),
            (xi1, yi1, vx1, vy1, wx1, wy1),
        ):
            valid = vx & vy
            idx_all.append(torch.where(valid, off + yi + xi, 0))
            w_all.append(torch.where(valid, wx * wy * a, 0))
        start += h * w
    idx = torch.cat(idx_all, dim=-1).view(B * S * Hc, -1)
    wts = torch.cat(w_all, dim=-1).view(B * S * Hc, -1)
    out = F.embedding_bag(idx, table, per_sample_weights=wts, mode="sum")
    return out.view(B, S, Hc * C).to(out_dtype)


@functools.cache
def _numba_kernel(C: int):
    """Fused sampling kernel for C channels per head (a compile-time constant, so the channel
    loops become a few SIMD instructions). Cached on disk by numba after the first compile."""
    from numba import prange

    @cached_njit(parallel=True, error_model="numpy", boundscheck=False)
    def kernel(value, shapes, starts, ref, offsets, weights, order, out):
        # value [B, Hc, L, C] head-major; out [B, S, Hc*C]; order [B, S]: visiting order of the
        # queries (by image position, for cache locality; results do not depend on it)
        B, S = out.shape[0], out.shape[1]
        Hc, Lv, P = weights.shape[2], weights.shape[3], weights.shape[4]
        one, two, half = np.float32(1.0), np.float32(2.0), np.float32(0.5)
        for bh in prange(B * Hc):  # one head's table (~MBs) stays in cache
            b = bh // Hc
            h = bh - b * Hc
            tab = value[b, h]
            acc = np.zeros(C, dtype=np.float32)
            for i in range(S):
                s = order[b, i]
                rx, ry = ref[b, s, 0], ref[b, s, 1]
                for c in range(C):
                    acc[c] = 0
                for lvl in range(Lv):
                    hh, ww, st = shapes[lvl, 0], shapes[lvl, 1], starts[lvl]
                    fw, fh = np.float32(ww), np.float32(hh)
                    for p in range(P):
                        # same float32 steps as offset/normaliser, 2·loc-1, grid_sample unnormalise
                        gx = (rx + offsets[b, s, h, lvl, p, 0] / fw) * two - one
                        gy = (ry + offsets[b, s, h, lvl, p, 1] / fh) * two - one
                        ix = ((gx + one) * fw - one) * half
                        iy = ((gy + one) * fh - one) * half
                        if not (ix > -one and ix < fw and iy > -one and iy < fh):
                            continue  # all four taps outside (also NaN)
                        x0 = int(ix + one) - 1  # floor, since ix > -1
                        y0 = int(iy + one) - 1
                        wx1 = ix - np.float32(x0)
                        wy1 = iy - np.float32(y0)
                        wx0, wy0 = one - wx1, one - wy1
                        a = weights[b, s, h, lvl, p]
                        r = st + y0 * ww + x0
                        if y0 >= 0:
                            if x0 >= 0:
                                wg = a * (wx0 * wy0)
                                for c in range(C):
                                    acc[c] += wg * tab[r, c]
                            if x0 + 1 < ww:
                                wg = a * (wx1 * wy0)
                                for c in range(C):
                                    acc[c] += wg * tab[r + 1, c]
                        if y0 + 1 < hh:
                            r += ww
                            if x0 >= 0:
                                wg = a * (wx0 * wy1)
                                for c in range(C):
                                    acc[c] += wg * tab[r, c]
                            if x0 + 1 < ww:
                                wg = a * (wx1 * wy1)
                                for c in range(C):
                                    acc[c] += wg * tab[r + 1, c]
                c0 = h * C
                for c in range(C):
                    out[b, s, c0 + c] = acc[c]

    return kernel


def _deformable_sample_numba(value, spatial_shapes, reference, offsets, weights):
    B, L, Hc, C = value.shape
    S = reference.shape[1]
    table = value.permute(0, 2, 1, 3).contiguous()  # [B, Hc, L, C]
    shapes = np.asarray(spatial_shapes, dtype=np.int64).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])[:-1]]).astype(np.int64)
    out = value.new_empty(B, S, Hc * C)
    # visit queries row by row of the coarsest level (nearby samples -> cache hits)
    h_c, w_c = spatial_shapes[-1]
    ref = reference.float().nan_to_num(0.0).clamp(-1.0, 2.0)
    key = (ref[..., 1] * h_c).floor() * (4 * w_c) + ref[..., 0] * w_c
    order = key.argsort(dim=1).to(torch.int64)
    _numba_kernel(C)(
        table.numpy(),
        shapes,
        starts,
        reference.float().contiguous().numpy(),
        offsets.float().contiguous().numpy(),
        weights.float().contiguous().numpy(),
        order.contiguous().numpy(),
        out.numpy(),
    )
    return out


class DeformableAttention(nn.Module):
    """Official ``MSDeformableAttention3D`` (no output projection of its own).

    Keys: sampling_offsets (D -> Hc·Lv·P·2), attention_weights (D -> Hc·Lv·P),
    value_proj (C -> D), all with bias.
    """

    def __init__(self, dim: int, feat_dim: int, heads: int, levels: int = 2, points: int = 8):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(feat_dim, dim)

    def sampling(self, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets [B,S,Hc,Lv,P,2] (pixels of each level, (x, y)) and softmaxed weights
        [B,S,Hc,Lv,P] (jointly over levels × points). query: [B, S, D]."""
        B, S, _ = query.shape
        off = self.sampling_offsets(query).view(B, S, self.heads, self.levels, self.points, 2)
        aw = self.attention_weights(query).view(B, S, self.heads, self.levels * self.points)
        aw = aw.softmax(-1).view(B, S, self.heads, self.levels, self.points)
        return off, aw

    def forward_view(
        self,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        feats: torch.Tensor,
        spatial_shapes: tuple[tuple[int, int], ...],
        reference: torch.Tensor,
        sample=deformable_sample,
    ) -> torch.Tensor:
        """One view. feats [B, L, C], reference [B, S, 2] -> [B, S, D]."""
        B, L, _ = feats.shape
        value = self.value_proj(feats).view(B, L, self.heads, -1)
        return sample(value, spatial_shapes, reference, offsets, weights)

    def forward_views(
        self,
        offsets: torch.Tensor,
        weights: torch.Tensor,
        feats: torch.Tensor,
        spatial_shapes: tuple[tuple[int, int], ...],
        reference: torch.Tensor,
    ) -> torch.Tensor:
        """All views at once. feats [B, V, L, C], reference [B, V, S, 2] -> [B, V, S, D]."""
        B, V, L, C = feats.shape
        proj = self.value_proj
        if (
            feats.device.type == "cpu"
            and feats.dtype == proj.weight.dtype == torch.float32
            and not torch.is_grad_enabled()
        ):
            # inference: the values (GBs per layer at 21 views) on huge pages, written in place
            value = hugepages.empty(B * V * L, proj.out_features)
            torch.addmm(proj.bias, feats.reshape(-1, C), proj.weight.t(), out=value)
        else:
            value = proj(feats)
        value = value.view(B, V, L, self.heads, -1)
        return deformable_sample_views(value, spatial_shapes, reference, offsets, weights)


class CrossViewAttention(nn.Module):
    """Official ``MSDCAWrapper``: deformable attention into each view, fused over views.

    out = output_proj(Σ_v softmax_v(cross_view_weight(o_v))·o_v) + query, with o_v the
    deformable attention into view v (offsets and weights from the query, shared by all views).
    :meth:`forward` samples all views in one operation; :meth:`forward_per_view`, the reference,
    loops over views with an online view softmax.
    """

    def __init__(self, dim: int, feat_dim: int, heads: int, points: int):
        super().__init__()
        self.deformable_attention = DeformableAttention(dim, feat_dim, heads, 2, points)
        self.output_proj = nn.Linear(dim, dim)
        self.cross_view_weight = nn.Linear(dim, 1)

    def forward(
        self, query: torch.Tensor, features: ImageFeatures, reference: torch.Tensor
    ) -> torch.Tensor:
        """query [B,S,D] (normalised stream), reference [B,V,S,2] -> [B,S,D] incl. residual."""
        offsets, weights = self.deformable_attention.sampling(query)
        o = self.deformable_attention.forward_views(
            offsets, weights, features.feats, features.spatial_shapes, reference
        )  # [B, V, S, D]
        p = self.cross_view_weight(o).softmax(dim=1)  # [B, V, S, 1]
        acc = o[:, 0] * p[:, 0]
        for v in range(1, o.shape[1]):  # Σ_v p_v·o_v without a [B, V, S, D] temporary
            acc = acc.addcmul_(o[:, v], p[:, v])
        return self.output_proj(acc) + query

    def forward_per_view(
        self,
        query: torch.Tensor,
        features: ImageFeatures,
        reference: torch.Tensor,
        sample=deformable_sample,
    ) -> torch.Tensor:
        """:meth:`forward` one view at a time (the reference): each view's o_v, then an online
        view softmax (running max), so per-view outputs are not all kept. ``sample``: the
        per-view sampling function (:func:`deformable_sample` or its torch version)."""
        offsets, weights = self.deformable_attention.sampling(query)
        run_max = acc = denom = None
        for v in range(features.feats.shape[1]):
            o = self.deformable_attention.forward_view(
                offsets,
                weights,
                features.feats[:, v],
                features.spatial_shapes,
                reference[:, v],
                sample,
            )
            logit = self.cross_view_weight(o)  # [B, S, 1]
            if run_max is None:
                run_max, acc, denom = logit, o, torch.ones_like(logit)
                continue
            new_max = torch.maximum(run_max, logit)
            c_old, c_new = torch.exp(run_max - new_max), torch.exp(logit - new_max)
            acc = acc * c_old if v == 1 else acc.mul_(c_old)  # (view 0's o is not ours to edit)
            acc.addcmul_(o, c_new)
            denom = denom * c_old + c_new
            run_max = new_max
        return self.output_proj(acc / denom) + query


class TransformerBlock(nn.Module):
    """One block (official ``TransformerBlock``):

    1. x <- x + SelfAttn(RMSNorm_sa(x))
    2. x <- CrossAttn(RMSNorm_ca(x)), which adds RMSNorm_ca(x) (QUIRK: the stream is replaced
       by its normalised version)
    3. x <- x + FFN(RMSNorm_ffn(x))
    """

    def __init__(self, dim, heads, feat_dim, points, mode):
        super().__init__()
        self.self_attention = SelfAttention(dim, heads, mode)
        self.cross_attention = CrossViewAttention(dim, feat_dim, heads, points)
        self.feed_forward = FeedForward(dim, ffn_hidden_dim(dim))
        self.self_attention_norm = RMSNorm(dim)
        self.cross_attention_norm = RMSNorm(dim)
        self.ffn_norm = RMSNorm(dim)

    def forward(self, x, pos, features: ImageFeatures, reference):
        """x [B,S,D], pos [B,S,3], reference [B,V,S,2] -> [B,S,D]."""
        x = x + self.self_attention(self.self_attention_norm(x), pos)
        x = self.cross_attention(self.cross_attention_norm(x), features, reference)
        return x + self.feed_forward(self.ffn_norm(x))


class GeoTransformer(nn.Module):
    """The geometry-aware transformer of both stages. Keys: query_token, layers.N.*, norm."""

    def __init__(self, dim, layers, heads, feat_dim, points, grid_size, mode):
        super().__init__()
        self.grid_size = grid_size
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim - 3))
        self.layers = nn.ModuleList(
            TransformerBlock(dim, heads, feat_dim, points, mode) for _ in range(layers)
        )
        self.norm = RMSNorm(dim)
        #: recompute each block in the backward pass instead of keeping its activations
        #: (training only; the official ``use_checkpoint``)
        self.gradient_checkpointing = False

    @classmethod
    def from_config(cls, cfg: ProposalConfig | ReconstructionConfig) -> GeoTransformer:
        """The transformer of either stage, sized by its config section."""
        return cls(
            cfg.transformer_dim,
            cfg.transformer_layers,
            cfg.transformer_heads,
            cfg.encoder_feat_dim,
            cfg.num_deform_points,
            cfg.grid_size,
            attention_mode(cfg),
        )

    def set_attention_mode(self, mode: str) -> None:
        for layer in self.layers:
            layer.self_attention.mode = mode

    def forward(
        self,
        xyz: torch.Tensor,
        features: ImageFeatures,
        c2ws: torch.Tensor,
        Ks: torch.Tensor,
        xyz_scale: float = 1.0,
    ) -> torch.Tensor:
        """Tokens at world points xyz [B,S,3] read the views -> [B,S,D] (after final RMSNorm).

        Input h0 = concat(xyz, query_token); RoPE positions from :func:`xyz_to_index`;
        reference points from :func:`project_points`.
        """
        B, S, _ = xyz.shape
        pos = xyz_to_index(xyz, xyz_scale, self.grid_size)
        reference = project_points(xyz, projection_matrices(c2ws, Ks))
        h = torch.cat([xyz, self.query_token.expand(B, S, -1)], dim=-1)
        for layer in self.layers:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(layer, h, pos, features, reference, use_reentrant=False)
            else:
                h = layer(h, pos, features, reference)
        return self.norm(h)


# ============================================================================ proposal network


def coarse_grid(n: int) -> torch.Tensor:
    """Coarse token points: ij meshgrid of 0.5·linspace(-1,1,n), x slowest. -> [n³, 3]."""
    lin = torch.linspace(-1, 1, n) * 0.5
    return torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)


def fine_grid(n: int) -> torch.Tensor:
    """Fine anchor cells: 0.5·linspace(-1,1,G) per axis. -> [G, G, G, 3] (X, Y, Z)."""
    lin = 0.5 * torch.linspace(-1, 1, n)
    return torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1)


class ProposalNetwork(nn.Module):
    """Official ``TransformerSerializer``: a dense coarse token grid predicts fine occupancy.

    Keys: encoder.*, transformer.*, upsample (D -> token_res³).
    """

    def __init__(self, cfg: ProposalConfig, dino: dict, view_chunk: int = 4):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(dino, cfg.encoder_feat_dim, view_chunk)
        self.transformer = GeoTransformer.from_config(cfg)
        self.upsample = nn.Linear(cfg.transformer_dim, cfg.token_res**3)

    def occupancy_logits(
        self, features: ImageFeatures, c2ws: torch.Tensor, Ks: torch.Tensor
    ) -> torch.Tensor:
        """Official ``pred_occupancy``: -> [B, G, G, G] logits, index order (X, Y, Z).

        The t³ outputs of coarse token (ix,iy,iz) fill fine cells X = ix·t + tx (same for y, z),
        i.e. view [B,f,f,f,t,t,t] -> permute (0,1,4,2,5,3,6) -> [B,G,G,G].
        """
        B = features.feats.shape[0]
        t, G = self.cfg.token_res, self.cfg.grid_size
        f = G // t
        xyz = coarse_grid(f).to(features.feats)[None].expand(B, -1, -1)
        h = self.transformer(xyz, features, c2ws, Ks, xyz_scale=self.cfg.scale)
        x = self.upsample(h).view(B, f, f, f, t, t, t).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(B, G, G, G)

    def forward(self, images, c2ws, Ks) -> torch.Tensor:
        """images [B,V,3,H,W], c2ws [B,V,4,4], Ks [B,V,3,3] -> logits [B,G,G,G]."""
        return self.occupancy_logits(self.encoder(images, c2ws, Ks), c2ws, Ks)


def select_anchors(
    logits: torch.Tensor,
    max_seq_len: int,
    generator: torch.Generator | None = None,
    force_anchors: int | None = None,
) -> list[torch.Tensor]:
    """Anchors of one batch item per entry: occupied cells, as the official serializer.

    Cells with logit > 0 (strict) in C order (X slowest), or the ``force_anchors`` top logits
    (put back in C order). If there are >= max_seq_len of them, a random subset
    ``randperm(count, generator)[:max_seq_len]`` is taken (random order, as the official code).

    Args:
        logits: [B, G, G, G].
    Returns:
        B tensors [n_b, 3] (n_b <= max_seq_len), world coordinates 0.5·linspace(-1,1,G).
    """
    G = logits.shape[-1]
    full = fine_grid(G).to(logits.device).reshape(-1, 3)
    out = []
    for b in range(logits.shape[0]):
        flat = logits[b].reshape(-1)
        if force_anchors is None:
            idx = torch.nonzero(flat > 0).squeeze(1)
        else:
            k = min(int(force_anchors), flat.numel())
            idx = torch.topk(flat, k, sorted=False).indices.sort().values
        pts = full[idx]
        if pts.shape[0] >= max_seq_len:
            perm = torch.randperm(pts.shape[0], generator=generator)[:max_seq_len]
            pts = pts[perm.to(pts.device)]
        out.append(pts)
    return out


def pad_anchors(anchors: list[torch.Tensor], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad each [n_b,3] to ``length`` rows -> points [B,length,3], mask [B,length] uint8."""
    B, device = len(anchors), anchors[0].device
    pts = torch.zeros(B, length, 3, device=device)
    mask = torch.zeros(B, length, dtype=torch.uint8, device=device)
    for b, a in enumerate(anchors):
        pts[b, : a.shape[0]] = a
        mask[b, : a.shape[0]] = 1
    return pts, mask


# ============================================================================ reconstruction


class GaussianDecoder(nn.Module):
    """Official renderer's ``latent_decoder`` + ``get_gaussians``. Keys: latent_decoder.{0,2}."""

    def __init__(self, dim: int, gs_per_token: int, offset_max: float, scale_max: float):
        super().__init__()
        self.gs_per_token, self.offset_max, self.scale_max = gs_per_token, offset_max, scale_max
        width = 14 * gs_per_token
        self.latent_decoder = nn.Sequential(
            nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width)
        )

    def get_gaussians(self, xyz: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Activated Gaussians of each anchor.

        Args:
            xyz: [B, N, 3] anchors; latents: [B, N, D].
        Returns:
            [B, N·K, 14], row n·K + k: xyz = anchor + offset_max·sigmoid (positive offsets only,
            QUIRK), opacity sigmoid, scale = scale_max·sigmoid (linear), rotation = normalised
            4-vector (wxyz, eps 1e-12), rgb = clamp(·, -0.5, 0.5) + 0.5.
        """
        B, N, _ = xyz.shape
        x = self.latent_decoder(latents).view(B, N, self.gs_per_token, 14)
        pos = xyz[:, :, None] + self.offset_max * torch.sigmoid(x[..., 0:3])
        opacity = torch.sigmoid(x[..., 3:4])
        scale = self.scale_max * torch.sigmoid(x[..., 4:7])
        rot = F.normalize(x[..., 7:11], dim=-1, eps=1e-12)
        rgb = x[..., 11:14].clamp(-0.5, 0.5) + 0.5
        return torch.cat([pos, opacity, scale, rot, rgb], dim=-1).reshape(B, -1, 14)


class ReconstructionModel(nn.Module):
    """Official ``GeoLRM`` generator. Keys: encoder.*, transformer.*, renderer.*."""

    def __init__(self, cfg: ReconstructionConfig, dino: dict, view_chunk: int = 4):
        super().__init__()
        self.cfg = cfg
        self.encoder = ImageEncoder(dino, cfg.encoder_feat_dim, view_chunk)
        self.transformer = GeoTransformer.from_config(cfg)
        self.renderer = GaussianDecoder(
            cfg.transformer_dim, cfg.gs_per_token, cfg.offset_max, cfg.scale_max
        )

    def forward_latents(self, xyz, images, c2ws, Ks, xyz_scale: float | None = None):
        """xyz [B,S,3], images [B,V,3,H,W], c2ws [B,V,4,4], Ks [B,V,3,3] -> latents [B,S,D]."""
        features = self.encoder(images, c2ws, Ks)
        scale = self.cfg.xyz_scale if xyz_scale is None else xyz_scale
        return self.transformer(xyz, features, c2ws, Ks, xyz_scale=scale)


# ============================================================================ whole model


@dataclass
class GeoLRMOutput:
    """What :class:`GeoLRM` returns.

    Attributes:
        anchors: [B, S, 3] real anchors in the official order (S = max count over the batch;
            rows past ``anchor_counts[b]`` are zero when counts differ).
        gaussians: [B, S·K, 14] activated Gaussians of those anchors: xyz, opacity, scale(3),
            rotation wxyz(4), rgb(3) (the official ``get_gaussians`` layout).
        occupancy_logits: [B, G, G, G] proposal logits (X, Y, Z).
        anchor_counts: [B] int64.
        points: [B, S_run, 3] rows the reconstruction transformer ran on (= official
            ``serializer.pts``: anchors then zero padding in compat mode).
        mask: [B, S_run] uint8, 1 for real anchors.
        latents: [B, S_run, D] latents of those rows.
        timings: seconds per stage.
    """

    anchors: torch.Tensor
    gaussians: torch.Tensor
    occupancy_logits: torch.Tensor
    anchor_counts: torch.Tensor
    points: torch.Tensor
    mask: torch.Tensor
    latents: torch.Tensor
    gs_per_token: int
    timings: dict = field(default_factory=dict)

    def to_gaussians(self, b: int = 0):
        """The Gaussians of batch item b as :class:`pipelines.splats.gaussians.Gaussians`."""
        return gaussians_from_output(self, b)


def gaussians_from_output(out: GeoLRMOutput, b: int = 0):
    """[S·K, 14] rows of item b (real anchors only) -> ``Gaussians`` (activated values)."""
    n = int(out.anchor_counts[b]) * out.gs_per_token
    return gaussians_from_rows(out.gaussians[b, :n])


def gaussians_from_rows(rows: torch.Tensor) -> Gaussians:
    """Rows ``[N, 14]`` in the ``get_gaussians`` layout -> ``Gaussians`` (float32; gradients
    flow through, as training renders them)."""
    g = rows.float()
    return Gaussians(
        means=g[:, 0:3].contiguous(),
        scales=g[:, 4:7].contiguous(),
        quats=g[:, 7:11].contiguous(),
        opacities=g[:, 3].contiguous(),
        colors=g[:, 11:14].contiguous(),
    )


class GeoLRM(nn.Module):
    """GeoLRM: posed views -> anchors -> Gaussians. Keys: serializer.*, lrm_generator.*.

    Use :meth:`from_pretrained` (official checkpoint) or :meth:`from_config` (random init).
    """

    def __init__(self, config: GeoLRMConfig | dict | None = None, **options):
        super().__init__()
        if not isinstance(config, GeoLRMConfig) or options:
            config = GeoLRMConfig.from_dict(config, **options)
        self.config = config
        self.serializer = ProposalNetwork(config.serializer, config.dino, config.view_chunk)
        self.lrm_generator = ReconstructionModel(
            config.lrm_generator, config.dino, config.view_chunk
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, config: GeoLRMConfig | dict | None = None, **options) -> GeoLRM:
        """Randomly initialised model (eval mode). config: None = the released architecture."""
        model = cls(config, **options)
        model.apply(_init_weights)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path, config: GeoLRMConfig | dict | None = None, **options) -> GeoLRM:
        """Load official weights (.ckpt/.pt/.safetensors with official key names).

        Args:
            path: checkpoint file.
            config: None = configs/geolrm.yaml (the released model); else a dict with
                ``dino``/``serializer``/``lrm_generator`` sections.
            options: max_seq_len, seed, compat_padding, attention, xyz_scale, force_anchors,
                view_chunk.
        Raises:
            MissingWeightsError: the file does not exist.
            InputError: keys or shapes do not match the config.
        """
        with torch.device("meta"):
            model = cls(config, **options)
        state = load_geolrm_state_dict(path, model)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval().requires_grad_(False)

    def set_options(self, **options) -> GeoLRM:
        """Change runtime options (max_seq_len, seed, compat_padding, attention, ...)."""
        cfg = GeoLRMConfig.from_dict(self.config, **options)
        self.config = cfg
        self.serializer.cfg = cfg.serializer
        self.lrm_generator.cfg = cfg.lrm_generator
        self.serializer.transformer.set_attention_mode(attention_mode(cfg.serializer))
        self.lrm_generator.transformer.set_attention_mode(attention_mode(cfg.lrm_generator))
        for enc in (self.serializer.encoder, self.lrm_generator.encoder):
            enc.view_chunk = cfg.view_chunk
        return self

    # ------------------------------------------------------------------ inference
    def forward(self, images: torch.Tensor, c2ws: torch.Tensor, Ks: torch.Tensor) -> GeoLRMOutput:
        """Reconstruct (runs under ``torch.inference_mode``).

        Args:
            images: [B, V, 3, H, W] RGB in [0, 1], H and W multiples of 14 (448/560 officially).
            c2ws: [B, V, 4, 4] OpenGL camera-to-world, z-up world, object at the origin.
            Ks: [B, V, 3, 3] intrinsics normalised by image size.
        Returns:
            :class:`GeoLRMOutput`.
        """
        images, c2ws, Ks = self._check_inputs(images, c2ws, Ks)
        cfg = self.config
        timings: dict[str, float] = {}
        with torch.inference_mode():
            t0 = time.perf_counter()
            feats = self.serializer.encoder(images, c2ws, Ks)
            t1 = time.perf_counter()
            logits = self.serializer.occupancy_logits(feats, c2ws, Ks)
            del feats
            gen = torch.Generator().manual_seed(int(cfg.seed))
            anchors = select_anchors(logits, cfg.serializer.max_seq_len, gen, cfg.force_anchors)
            t2 = time.perf_counter()
            timings["proposal_encoder"] = t1 - t0
            timings["proposal_transformer"] = t2 - t1

            feats = self.lrm_generator.encoder(images, c2ws, Ks)
            t3 = time.perf_counter()
            timings["reconstruction_encoder"] = t3 - t2
            counts = torch.tensor([a.shape[0] for a in anchors], dtype=torch.int64)
            run_len = cfg.serializer.max_seq_len if cfg.compat_padding else int(counts.max())
            points, mask = pad_anchors(anchors, run_len)
            points = points.to(images.device)
            transformer = self.lrm_generator.transformer
            scale = cfg.lrm_generator.xyz_scale
            latents = points.new_zeros(len(anchors), run_len, cfg.lrm_generator.transformer_dim)
            if run_len == 0:
                pass  # nothing occupied and no padding asked for
            elif cfg.compat_padding or len(anchors) == 1:
                latents = transformer(points, feats, c2ws, Ks, xyz_scale=scale)
            else:  # real anchors only, item by item (counts differ)
                for b, a in enumerate(anchors):
                    if a.shape[0] == 0:
                        continue
                    sub = ImageFeatures(feats.feats[b : b + 1], feats.spatial_shapes)
                    latents[b, : a.shape[0]] = transformer(
                        a[None], sub, c2ws[b : b + 1], Ks[b : b + 1], xyz_scale=scale
                    )[0]
            del feats
            t4 = time.perf_counter()
            timings["reconstruction_transformer"] = t4 - t3
            n_max = int(counts.max())
            K = cfg.lrm_generator.gs_per_token
            gaussians = self.lrm_generator.renderer.get_gaussians(
                points[:, :n_max], latents[:, :n_max]
            )
            for b, n in enumerate(counts.tolist()):  # rows of padding anchors -> zero
                gaussians[b, n * K :] = 0
            timings["decoder"] = time.perf_counter() - t4
        return GeoLRMOutput(
            anchors=points[:, :n_max].clone(),
            gaussians=gaussians,
            occupancy_logits=logits,
            anchor_counts=counts,
            points=points,
            mask=mask,
            latents=latents,
            gs_per_token=K,
            timings=timings,
        )

    def _check_inputs(self, images, c2ws, Ks):
        if images.dim() != 5 or images.shape[2] != 3:
            raise InputError(f"images must be [B,V,3,H,W] RGB; got shape {tuple(images.shape)}")
        B, V, _, H, W = images.shape
        if tuple(c2ws.shape) != (B, V, 4, 4):
            raise InputError(f"c2ws must be [B,V,4,4] = [{B},{V},4,4]; got {tuple(c2ws.shape)}")
        if tuple(Ks.shape) != (B, V, 3, 3):
            raise InputError(f"Ks must be [B,V,3,3] = [{B},{V},3,3]; got {tuple(Ks.shape)}")
        p = self.serializer.encoder.patch_size
        if H % p or W % p:
            raise InputError(
                f"image size {H}x{W} must be a multiple of {p} (the official pipelines use 448 or 560)"
            )
        images = images.float()
        lo, hi = float(images.min()), float(images.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(
                f"images must be RGB in [0, 1]; got values in [{lo:.3g}, {hi:.3g}] "
                "(divide 8-bit images by 255)"
            )
        return images, c2ws.float(), Ks.float()


# ============================================================================ random init


def _init_weights(module: nn.Module) -> None:
    """Initialisation for random-weight runs (benchmarks/tests). DINOv2 keeps the HF init."""
    if isinstance(module, DeformableAttention):
        nn.init.zeros_(module.sampling_offsets.weight)
        # each head looks in its own direction, points at growing distances (Deformable DETR)
        theta = torch.arange(module.heads, dtype=torch.float32) * (2 * math.pi / module.heads)
        grid = torch.stack([theta.cos(), theta.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True).values
        grid = grid.view(module.heads, 1, 1, 2).repeat(1, module.levels, module.points, 1)
        grid = grid * torch.arange(1, module.points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            module.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(module.attention_weights.weight)
        nn.init.zeros_(module.attention_weights.bias)
        nn.init.xavier_uniform_(module.value_proj.weight)
        nn.init.zeros_(module.value_proj.bias)
    elif isinstance(module, CrossViewAttention):
        nn.init.xavier_uniform_(module.output_proj.weight)
        nn.init.zeros_(module.output_proj.bias)
    elif isinstance(module, GeoTransformer):
        nn.init.normal_(module.query_token, std=0.02)
