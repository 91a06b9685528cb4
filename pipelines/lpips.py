"""LPIPS (Zhang et al., CVPR 2018; "v0.1", VGG16 backbone) in plain torch, no torchvision.

The perceptual distance GeoLRM trains and validates with (its ``lambda_lpips = 2`` and its
``val/lpips``, through torchmetrics' ``LearnedPerceptualImagePatchSimilarity(net_type="vgg")``,
which wraps the ``lpips`` package), and the LPIPS ``geolrm eval`` reports:

1. images in ``[-1, 1]`` are shifted and scaled per channel (:data:`SHIFT`, :data:`SCALE`);
2. VGG16's convolutional trunk gives five feature maps, after ``relu1_2``, ``relu2_2``,
   ``relu3_3``, ``relu4_3`` and ``relu5_3`` (indices 3, 8, 15, 22, 29 of torchvision's
   ``vgg16().features``, :data:`TAPS`);
3. each map is divided by its per-pixel channel norm (plus :data:`EPS`);
4. the squared difference of the two images' maps is weighted per channel by a learnt
   non-negative 1x1 convolution (the "linear heads"), averaged over the pixels, and the five
   layers are summed: one distance per image pair.

Weights: the VGG16 trunk from torchvision's ImageNet weights (the hub copy ``timm/vgg16.tv_in1k``
keeps torchvision's ``features.N.*`` names; registry entry ``vgg16``), the heads from the
``lpips`` package's ``weights/v0.1/vgg.pth`` (``lin{k}.model.1.weight``; registry entry
``lpips-vgg``). :func:`load_lpips` finds both through the weights registry.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from pipelines.errors import InputError
from pipelines.state_dicts import load_state_dict
from pipelines.weights import ensure, local_path

__all__ = [
    "EPS",
    "HEADS_WEIGHTS",
    "LPIPS",
    "MIN_SIZE",
    "SCALE",
    "SHIFT",
    "TAPS",
    "TRUNK_WEIGHTS",
    "VGG16_LAYERS",
    "load_lpips",
    "missing_weights",
]

PathLike = str | os.PathLike

#: torchvision's VGG16 configuration "D": output channels of each 3x3 convolution, "M" a 2x2
#: max-pool. Each convolution is followed by a ReLU, so module indices match ``vgg16().features``.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: ``features`` indices whose outputs LPIPS compares (relu1_2 ... relu5_3).
TAPS = (3, 8, 15, 22, 29)
#: The ``lpips`` package's ScalingLayer: ``(x - SHIFT) / SCALE`` for x in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
#: Added to the channel norm before dividing (``lpips.normalize_tensor``).
EPS = 1e-10
#: Smallest image side: four 2x2 max-pools come before the last tap.
MIN_SIZE = 16
#: Registry entries (``pipelines/weights.toml``) of the VGG16 trunk and of the linear heads.
TRUNK_WEIGHTS = "vgg16"
HEADS_WEIGHTS = "lpips-vgg"


def _vgg16_trunk() -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for v in VGG16_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, int(v), kernel_size=3, padding=1), nn.ReLU()]
            c_in = int(v)
    return nn.Sequential(*layers[: TAPS[-1] + 1])  # the last max-pool is never used


class LPIPS(nn.Module):
    """LPIPS distance with a VGG16 trunk; parameters are frozen (``requires_grad=False``) but
    gradients flow to the images.

    ``features`` carries torchvision's names (``features.0.weight`` ...), ``lins[k].weight`` the
    ``[1, C_k, 1, 1]`` head of tap k.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = _vgg16_trunk()
        channels = [self.features[i - 1].out_channels for i in TAPS]  # the conv before each ReLU
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: Tensor) -> list[Tensor]:
        """The five unit-normalised feature maps of ``x`` ``[B, 3, H, W]`` in [-1, 1]."""
        h = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in TAPS:
                out.append(h / (h.square().sum(1, keepdim=True).sqrt() + EPS))
        return out

    def forward(self, x: Tensor, y: Tensor, normalize: bool = False) -> Tensor:
        """Distance per image pair.

        Args:
            x, y: ``[B, 3, H, W]`` images in [-1, 1] (``normalize=True``: in [0, 1]); H and W
                at least :data:`MIN_SIZE`.

        Returns:
            ``[B]`` distances (0 for identical images).
        """
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise InputError(
                f"LPIPS compares two [B, 3, H, W] batches, got {tuple(x.shape)} and "
                f"{tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(
                f"LPIPS needs images of at least {MIN_SIZE} x {MIN_SIZE} px, got {tuple(x.shape)}"
            )
        if normalize:
            x, y = 2 * x - 1, 2 * y - 1
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self.taps(x), self.taps(y), strict=True):
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return total

    # -- weights ------------------------------------------------------------------------------

    def load_trunk(self, state: dict[str, Tensor]) -> None:
        """Load VGG16 convolution weights named as torchvision's (``features.N.weight`` /
        ``.bias``, any prefix before ``features.``; classifier keys are ignored)."""
        want = {k for k in self.features.state_dict()}
        got: dict[str, Tensor] = {}
        for key, value in state.items():
            i = key.find("features.")
            name = key[i + len("features.") :] if i >= 0 else None
            if name in want:
                got[name] = value
        missing = sorted(want - got.keys())
        if missing:
            raise InputError(
                f"the VGG16 weights lack {len(missing)} convolution tensors (e.g. "
                f"features.{missing[0]}); use torchvision's VGG16 (timm/vgg16.tv_in1k)"
            )
        self.features.load_state_dict(got)

    def load_heads(self, state: dict[str, Tensor]) -> None:
        """Load the ``lpips`` package's heads (``lin{k}.model.1.weight``, ``[1, C_k, 1, 1]``)."""
        for k, lin in enumerate(self.lins):
            key = f"lin{k}.model.1.weight"
            w = state.get(key)
            if w is None or tuple(w.shape) != tuple(lin.weight.shape):
                raise InputError(
                    f"the LPIPS head file lacks {key} of shape {tuple(lin.weight.shape)}; use "
                    "lpips' weights/v0.1/vgg.pth"
                )
            lin.weight.copy_(w)


def load_lpips(
    trunk: PathLike | None = None,
    heads: PathLike | None = None,
    device: str | torch.device = "cpu",
) -> LPIPS:
    """LPIPS with real weights: ``trunk`` (VGG16 ``.safetensors`` / ``.pth``) and ``heads``
    (lpips' ``vgg.pth``); each None is taken from the weights registry
    (:data:`TRUNK_WEIGHTS`, :data:`HEADS_WEIGHTS`), never downloaded here.

    Raises:
        InputError: a file is missing (with the ``geolrm weights download`` command) or wrong.
    """
    model = LPIPS()
    model.load_trunk(load_state_dict(trunk if trunk is not None else ensure(TRUNK_WEIGHTS)))
    model.load_heads(load_state_dict(heads if heads is not None else ensure(HEADS_WEIGHTS)))
    return model.to(device)


def missing_weights() -> list[str]:
    """The registry names of the LPIPS weights not in the local cache (``[]``: all there).

    Looks only; ``geolrm weights download NAME`` fetches each.
    """
    return [name for name in (TRUNK_WEIGHTS, HEADS_WEIGHTS) if local_path(name) is None]
