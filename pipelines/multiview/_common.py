"""Helpers shared by the multi-view pipelines: image processors, weight loading, devices."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipelines.errors import InputError
from pipelines.state_dicts import load_state_dict

PathLike = str | os.PathLike

_PIL_RESAMPLE = {
    0: Image.Resampling.NEAREST,
    1: Image.Resampling.LANCZOS,
    2: Image.Resampling.BILINEAR,
    3: Image.Resampling.BICUBIC,
    4: Image.Resampling.BOX,
    5: Image.Resampling.HAMMING,
}


def _side(value, key: str) -> int:
    if isinstance(value, dict):
        for k in (key, "height", "shortest_edge", "width"):
            if k in value:
                return int(value[k])
        raise InputError(f"image processor size {value} has no {key}")
    return int(value)


@dataclass(frozen=True)
class ImageProcessor:
    """What ``transformers.CLIPImageProcessor`` does to one RGB image, from its
    ``preprocessor_config.json``: resize the shortest edge (PIL, the config's resample),
    centre crop, scale to [0, 1], normalise with the config's mean / std.

    Done here (PIL + torch) so the result does not depend on the transformers backend
    (transformers 5 wants torchvision for its default CLIP processor).
    """

    shortest_edge: int
    crop: int
    resample: int = 3
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    do_resize: bool = True
    do_center_crop: bool = True
    do_normalize: bool = True
    rescale_factor: float = 1.0 / 255.0

    @classmethod
    def from_file(cls, path: PathLike) -> ImageProcessor:
        path = Path(path)
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path} not found; the model folder is incomplete") from None
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: cannot read the image processor config ({e})") from None
        size = _side(cfg.get("size", 224), "shortest_edge")
        crop = _side(cfg.get("crop_size", size), "height")

        def triple(v, default):
            if v is None:
                return default
            if isinstance(v, (int, float)):
                return (float(v),) * 3
            return tuple(float(x) for x in v)

        return cls(
            shortest_edge=size,
            crop=crop,
            resample=int(cfg.get("resample", 3)),
            mean=triple(cfg.get("image_mean"), cls.mean),
            std=triple(cfg.get("image_std"), cls.std),
            do_resize=bool(cfg.get("do_resize", True)),
            do_center_crop=bool(cfg.get("do_center_crop", True)),
            do_normalize=bool(cfg.get("do_normalize", True)),
            rescale_factor=float(cfg.get("rescale_factor", 1.0 / 255.0)),
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """``[1, 3, crop, crop]`` float32."""
        im = image.convert("RGB")
        if self.do_resize:
            w, h = im.size
            s = self.shortest_edge
            if w <= h:
                nw, nh = s, int(s * h / w)
            else:
                nw, nh = int(s * w / h), s
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), _PIL_RESAMPLE.get(self.resample, Image.Resampling.BICUBIC))
        if self.do_center_crop:
            w, h = im.size
            c = self.crop
            left, top = (w - c) // 2, (h - c) // 2  # transformers' center_crop floors
            im = im.crop((left, top, left + c, top + c))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
        x = x * self.rescale_factor
        if self.do_normalize:
            mean = torch.tensor(self.mean).view(3, 1, 1)
            std = torch.tensor(self.std).view(3, 1, 1)
            x = (x - mean) / std
        return x.unsqueeze(0)


def find_weights(folder: Path, stems: Sequence[str] = ("diffusion_pytorch_model", "model")) -> Path:
    """The weights file of a diffusers / transformers component folder."""
    for stem in stems:
        for ext in (".safetensors", ".bin"):
            p = folder / f"{stem}{ext}"
            if p.is_file():
                return p
    raise InputError(
        f"{folder}: no weights file ({stems[0]}.safetensors); the model folder is incomplete"
    )


def build_on_meta(cls, config: dict):
    """Instantiate a diffusers model from ``config`` without allocating its weights."""
    with torch.device("meta"):
        return cls.from_config(config)


def assign_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str, dtype):
    """Load ``state`` strictly into a (meta) model, cast to ``dtype``; one-line errors."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise InputError(f"{what}: weights do not match the architecture: {', '.join(parts)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise InputError(
                f"{what}: {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}"
            )
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_meta:  # pragma: no cover - non-persistent buffers are not expected here
            raise InputError(f"{what}: {name} was not initialised")
    return model.eval().requires_grad_(False)


def load_diffusers_model(cls, folder: Path, dtype, weights: PathLike | None = None, **overrides):
    """A diffusers model from ``folder/config.json`` and its weights (or ``weights``)."""
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}/config.json not found; the model folder is incomplete")
    config = dict(cls.load_config(str(folder)))
    config.update(overrides)
    model = build_on_meta(cls, config)
    path = Path(weights) if weights is not None else find_weights(folder)
    return assign_weights(model, load_state_dict(path), f"{cls.__name__} ({path})", dtype)


def load_transformers_model(cls, folder: Path, dtype):
    """A transformers model from a folder (config + weights), offline."""
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}/config.json not found; the model folder is incomplete")
    find_weights(folder, ("model", "pytorch_model"))
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{folder}: cannot load {cls.__name__} ({first})") from None
    return model.eval().requires_grad_(False)


class Placement:
    """Where the components run: everything on ``device``, or (``offload``) kept on the CPU
    and moved to ``device`` only while in use (model CPU offload)."""

    def __init__(self, device: str = "cpu", offload: bool = False):
        self.device = torch.device(device)
        self.offload = bool(offload) and self.device.type != "cpu"

    def place(self, *modules: torch.nn.Module) -> None:
        """Initial placement."""
        for m in modules:
            if m is not None:
                m.to("cpu" if self.offload else self.device)

    @contextlib.contextmanager
    def use(self, *modules: torch.nn.Module) -> Iterator[None]:
        if self.offload:
            for m in modules:
                m.to(self.device)
        try:
            yield
        finally:
            if self.offload:
                for m in modules:
                    m.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()


def to_pil(x: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` float in [0, 1] -> RGB PIL (rounded)."""
    arr = (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator (the same numbers on every device)."""
    g = torch.Generator("cpu")
    g.manual_seed(0 if seed is None else int(seed))
    return g


def randn(shape, generator: torch.Generator, device, dtype) -> torch.Tensor:
    """Normal noise drawn on the CPU from ``generator``, then moved."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)


def latent_multiple(pipe) -> int:
    """Image sides a diffusion pipeline accepts are multiples of this: the VAE's downsampling
    times the UNet's (``vae_scale_factor * 2 ** (len(block_out_channels) - 1)``)."""
    return pipe.vae_scale_factor * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def check_sampling(steps: int, size: int, multiple: int, what: str) -> None:
    """One-line :class:`InputError` for fewer than one denoising step, or a ``what`` of ``size``
    pixels that is not a positive multiple of ``multiple`` (:func:`latent_multiple`)."""
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    if size < multiple or size % multiple:
        raise InputError(f"{what} {size} must be a positive multiple of {multiple}")
