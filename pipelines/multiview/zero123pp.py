"""Zero123++ v1.2 from diffusers components: one framed photo -> a 3x2 grid of six views.

What it computes (the official ``Zero123PlusPipeline`` and InstantMesh's copy, re-written from
the published behaviour; facts in ``shared/reference/multiview.md`` section 1):

* **condition latent**: the photo through the VAE image processor (512 px, mean 0.5, std 0.8),
  ``vae.encode(x).latent_dist.sample()`` *without* the 0.18215 factor; with classifier-free
  guidance a negative latent from an all-zero image, batched ``[negative, condition]``;
* **global conditioning**: the empty prompt's CLIP text embeddings plus the CLIP image
  embedding times the 77 ``ramping_coefficients`` of ``model_index.json`` (token row ``i`` gets
  ``image_embeds * ramp[i]``); the unconditional branch gets the empty prompt only;
* **reference attention**: every self-attention (``attn1``) of the UNet gets a
  :class:`ReferenceAttnProcessor`. Each step the condition latent is noised to the current
  timestep (``scheduler.add_noise`` then ``scale_model_input``) and run through the UNet in
  *write* mode (each ``attn1`` stores its input tokens), then the real latents run in *read*
  mode (each ``attn1`` appends the stored tokens to its keys / values);
* **sampling**: ``EulerAncestralDiscreteScheduler`` (v-prediction) with ``trailing`` spacing,
  75 steps, guidance 4.0, latents ``(3 * tile / 8) x (2 * tile / 8)``;
* **decoding**: ``z / 0.75 + 0.22`` (undo ``(z - 0.22) * 0.75``), ``/ 0.18215``, VAE decode,
  ``* 1.6`` (undo the image scaling ``x * 0.5 / 0.8``), ``x / 2 + 0.5`` clamped: a
  ``3 * tile x 2 * tile`` image, view ``k`` at row ``k // 2``, column ``k % 2``.

All random numbers (VAE posterior sample, initial latents, the reference noise of every step,
the ancestral noise) come from one ``torch.Generator``, so a seed fixes the output (the
official pipeline draws the reference noise from the global RNG instead).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from pipelines.errors import InputError
from pipelines.multiview._common import (
    ImageProcessor,
    Placement,
    check_sampling,
    latent_multiple,
    load_diffusers_model,
    load_transformers_model,
    make_generator,
    randn,
    to_pil,
)

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_STEPS",
    "DEFAULT_TILE",
    "GRID",
    "LATENT_SCALE",
    "LATENT_SHIFT",
    "IMAGE_UNSCALE",
    "ReferenceAttnProcessor",
    "ReferenceAttnState",
    "Zero123PlusPipeline",
    "Zero123PlusOutput",
    "grid_to_views",
    "views_to_grid",
]

PathLike = str | os.PathLike

DEFAULT_STEPS = 75
DEFAULT_GUIDANCE = 4.0
DEFAULT_TILE = 320
#: rows, columns of the output grid
GRID = (3, 2)
LATENT_SHIFT = 0.22
LATENT_SCALE = 0.75
#: ``unscale_image``: x / 0.5 * 0.8
IMAGE_UNSCALE = 0.8 / 0.5


def grid_to_views(grid: torch.Tensor, rows: int = GRID[0], cols: int = GRID[1]) -> torch.Tensor:
    """``[C, rows*t, cols*t]`` -> ``[rows*cols, C, t, t]``; view ``k`` = row ``k // cols``,
    column ``k % cols``."""
    c, h, w = grid.shape
    if h % rows or w % cols or h // rows != w // cols:
        raise ValueError(f"grid {h}x{w} does not split into {rows}x{cols} square tiles")
    t = h // rows
    return grid.reshape(c, rows, t, cols, t).permute(1, 3, 0, 2, 4).reshape(rows * cols, c, t, t)


def views_to_grid(views: torch.Tensor, rows: int = GRID[0], cols: int = GRID[1]) -> torch.Tensor:
    """Inverse of :func:`grid_to_views`."""
    n, c, t, _ = views.shape
    if n != rows * cols:
        raise ValueError(f"{n} views do not fill a {rows}x{cols} grid")
    return views.reshape(rows, cols, c, t, t).permute(2, 0, 3, 1, 4).reshape(c, rows * t, cols * t)


# --------------------------------------------------------------------------------------------
# reference attention


class ReferenceAttnState:
    """Shared by all :class:`ReferenceAttnProcessor` of one UNet.

    ``mode``: ``"off"`` (plain self-attention), ``"write"`` (store each layer's input tokens in
    ``bank``) or ``"read"`` (append the stored tokens to each layer's keys / values).
    """

    def __init__(self) -> None:
        self.mode = "off"
        self.bank: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        self.mode = "off"
        self.bank.clear()


class ReferenceAttnProcessor:
    """Self-attention processor with reference write / read modes.

    Args:
        name: the processor's name in ``unet.attn_processors`` (the bank key).
        state: the shared :class:`ReferenceAttnState`.
        base: the processor doing the attention (``AttnProcessor2_0`` by default).
    """

    def __init__(self, name: str, state: ReferenceAttnState, base=None) -> None:
        if base is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            base = AttnProcessor2_0()
        self.name = name
        self.state = state
        self.base = base

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mode = self.state.mode
        if mode == "write":
            self.state.bank[self.name] = context
        elif mode == "read":
            ref = self.state.bank.get(self.name)
            if ref is None:
                raise RuntimeError(f"reference attention: nothing written for {self.name}")
            context = torch.cat([context, ref.to(context.dtype)], dim=1)
        return self.base(attn, hidden_states, context, attention_mask, temb)


def install_reference_attention(unet) -> ReferenceAttnState:
    """Wrap every self-attention (``*attn1.processor``) of ``unet``; returns the shared state.
    Cross-attention processors are left as they are."""
    state = ReferenceAttnState()
    procs = {}
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn1.processor"):
            base = proc.base if isinstance(proc, ReferenceAttnProcessor) else None
            procs[name] = ReferenceAttnProcessor(name, state, base)
        else:
            procs[name] = proc
    unet.set_attn_processor(procs)
    return state


# --------------------------------------------------------------------------------------------
# pipeline


@dataclass
class Zero123PlusOutput:
    """``grid``: ``[3, 3t, 2t]`` float in [0, 1]; ``views``: ``[6, 3, t, t]``."""

    grid: torch.Tensor
    views: torch.Tensor

    def grid_image(self) -> Image.Image:
        return to_pil(self.grid)

    def view_images(self) -> list[Image.Image]:
        return [to_pil(v) for v in self.views]


class Zero123PlusPipeline:
    """Zero123++ v1.2 (see the module docstring). Build it with :meth:`from_pretrained`."""

    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        vision_encoder,
        scheduler,
        clip_processor: ImageProcessor,
        vae_processor: ImageProcessor,
        ramping_coefficients,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ) -> None:
        self.unet = unet
        self.vae = vae
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.vision_encoder = vision_encoder
        self.scheduler = scheduler
        self.clip_processor = clip_processor
        self.vae_processor = vae_processor
        self.ramp = torch.as_tensor(ramping_coefficients, dtype=torch.float32).flatten()
        self.dtype = dtype
        self.placement = Placement(device, offload)
        self.device = self.placement.device
        self.ref_state = install_reference_attention(unet)
        self._empty_prompt: torch.Tensor | None = None
        self.placement.place(unet, vae, text_encoder, vision_encoder)

    # -- loading ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        folder: PathLike,
        unet_weights: PathLike | None = None,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: bool = False,
    ) -> Zero123PlusPipeline:
        """Load from a local diffusers-layout folder (the ``sudo-ai/zero123plus-v1.2``
        snapshot): ``model_index.json`` (with ``ramping_coefficients``), ``unet/``, ``vae/``,
        ``text_encoder/``, ``tokenizer/``, ``vision_encoder/``, ``feature_extractor_clip/``,
        ``feature_extractor_vae/``, ``scheduler/``.

        Args:
            unet_weights: a replacement UNet state dict (``.bin`` pickle of tensors or
                ``.safetensors``), e.g. InstantMesh's white-background
                ``diffusion_pytorch_model.bin``; the folder's UNet weights are then not read.
            dtype: weights dtype of the UNet and the CLIP encoders (the VAE stays float32).
            offload: keep the components on the CPU, moving each to ``device`` while in use.
        """
        from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

        folder = Path(folder)
        index_path = folder / "model_index.json"
        if not index_path.is_file():
            raise InputError(
                f"{folder} is not a Zero123++ model folder (no model_index.json); pass the "
                "sudo-ai/zero123plus-v1.2 snapshot (geolrm weights download zero123pp)"
            )
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{index_path}: cannot read ({e})") from None
        ramp = index.get("ramping_coefficients")
        if not isinstance(ramp, list) or not ramp:
            raise InputError(
                f"{index_path} has no ramping_coefficients; this is not a Zero123++ v1.1/v1.2 "
                "pipeline folder"
            )
        unet = load_diffusers_model(UNet2DConditionModel, folder / "unet", dtype, unet_weights)
        vae = load_diffusers_model(AutoencoderKL, folder / "vae", torch.float32)
        text_encoder = load_transformers_model(CLIPTextModel, folder / "text_encoder", dtype)
        vision_encoder = load_transformers_model(
            CLIPVisionModelWithProjection, folder / "vision_encoder", dtype
        )
        if not (folder / "tokenizer").is_dir():
            raise InputError(f"{folder}/tokenizer not found; the model folder is incomplete")
        tokenizer = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)
        sched_dir = folder / "scheduler"
        if not (sched_dir / "scheduler_config.json").is_file():
            raise InputError(f"{sched_dir}/scheduler_config.json not found")
        sched_cfg = EulerAncestralDiscreteScheduler.load_config(str(sched_dir))
        scheduler = EulerAncestralDiscreteScheduler.from_config(
            sched_cfg, timestep_spacing="trailing"
        )
        clip_proc = ImageProcessor.from_file(
            folder / "feature_extractor_clip" / "preprocessor_config.json"
        )
        vae_proc = ImageProcessor.from_file(
            folder / "feature_extractor_vae" / "preprocessor_config.json"
        )
        if len(ramp) != tokenizer.model_max_length:
            raise InputError(
                f"{index_path}: {len(ramp)} ramping_coefficients for a "
                f"{tokenizer.model_max_length}-token prompt"
            )
        return cls(
            unet,
            vae,
            text_encoder,
            tokenizer,
            vision_encoder,
            scheduler,
            clip_proc,
            vae_proc,
            ramp,
            device=device,
            dtype=dtype,
            offload=offload,
        )

    # -- properties ---------------------------------------------------------------------------

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def input_size(self) -> int:
        """Side of the condition image the VAE sees (512 for the released model)."""
        return self.vae_processor.crop

    # -- conditioning -------------------------------------------------------------------------

    @torch.no_grad()
    def empty_prompt_embeds(self) -> torch.Tensor:
        """``[1, 77, D]`` CLIP text embeddings of ``""`` (computed once)."""
        if self._empty_prompt is None:
            tok = self.tokenizer(
                "",
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            te = self.text_encoder
            mask = None
            if getattr(te.config, "use_attention_mask", False):
                mask = tok.attention_mask.to(self.device)
            with self.placement.use(te):
                dev = next(te.parameters()).device
                out = te(tok.input_ids.to(dev), attention_mask=mask)[0]
            self._empty_prompt = out.to("cpu", torch.float32)
            # the prompt is always "": the text tower is not needed on the device again
            te.to("cpu")
        return self._empty_prompt

    @torch.no_grad()
    def encode_prompt(self, image: Image.Image, guidance: bool) -> torch.Tensor:
        """``[2, 77, D]`` ``[unconditional, conditional]`` (``[1, ...]`` without guidance):
        text("") and text("") + image_embeds * ramp."""
        text = self.empty_prompt_embeds()
        pixels = self.clip_processor(image)
        ve = self.vision_encoder
        with self.placement.use(ve):
            dev = next(ve.parameters()).device
            emb = ve(pixels.to(dev, ve.dtype)).image_embeds.to("cpu", torch.float32)
        cond = text + emb[:, None, :] * self.ramp[None, :, None]
        out = torch.cat([text, cond]) if guidance else cond
        return out.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_condition(
        self, image: Image.Image, generator: torch.Generator, guidance: bool
    ) -> torch.Tensor:
        """``[2, 4, h, w]`` ``[negative, condition]`` latents (``[1, ...]`` without guidance),
        posterior samples without the VAE scaling factor."""
        x = self.vae_processor(image)
        if guidance:
            x = torch.cat([torch.zeros_like(x), x])
        with self.placement.use(self.vae):
            dist = self.vae.encode(x.to(self.device, torch.float32)).latent_dist
            noise = randn(dist.mean.shape, generator, self.device, torch.float32)
            lat = dist.mean + dist.std * noise
        return lat.to(self.dtype)

    # -- denoising ----------------------------------------------------------------------------

    def _unet(self, sample, t, prompt, cond_lat, generator, reference: bool) -> torch.Tensor:
        """One UNet evaluation with reference attention (write pass, then read pass)."""
        state = self.ref_state
        if reference:
            noise = randn(cond_lat.shape, generator, cond_lat.device, cond_lat.dtype)
            ref = self.scheduler.add_noise(cond_lat, noise, t.reshape(-1))
            ref = self.scheduler.scale_model_input(ref, t)
            state.bank.clear()
            state.mode = "write"
            try:
                self.unet(ref, t, encoder_hidden_states=prompt, return_dict=False)
                state.mode = "read"
                out = self.unet(sample, t, encoder_hidden_states=prompt, return_dict=False)[0]
            finally:
                state.clear()
            return out
        state.clear()
        return self.unet(sample, t, encoder_hidden_states=prompt, return_dict=False)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents ``[B, 4, h, w]`` -> images ``[B, 3, H, W]`` in [0, 1]."""
        z = latents.to(torch.float32) / LATENT_SCALE + LATENT_SHIFT
        z = z / self.vae.config.scaling_factor
        with self.placement.use(self.vae):
            x = self.vae.decode(z.to(self.device), return_dict=False)[0]
        x = x * IMAGE_UNSCALE
        return (x / 2 + 0.5).clamp(0, 1).float().cpu()

    @torch.no_grad()
    def __call__(
        self,
        image: Image.Image,
        num_inference_steps: int = DEFAULT_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE,
        seed: int | None = 42,
        generator: torch.Generator | None = None,
        tile_size: int = DEFAULT_TILE,
        reference_attention: bool = True,
        on_step: Callable[[int, int], None] | None = None,
    ) -> Zero123PlusOutput:
        """Six views of the object in ``image`` (RGB, composited on the UNet's background).

        Args:
            image: the condition photo (square; resized to the processors' sizes).
            num_inference_steps: denoising steps (75 as GeoLRM / InstantMesh; 28 is the
                pipeline's default and usually enough).
            guidance_scale: classifier-free guidance (<= 1 disables it).
            seed / generator: randomness (``generator`` wins).
            tile_size: side of one view; the grid is ``3 * tile x 2 * tile`` (320 released).
            reference_attention: False runs the UNet without the reference passes (only for
                tests and ablations: the model needs them).
            on_step: ``on_step(i, total)`` after each denoising step.
        """
        check_sampling(num_inference_steps, tile_size, latent_multiple(self), "tile size")
        gen = generator if generator is not None else make_generator(seed)
        guidance = guidance_scale > 1.0
        image = image.convert("RGB")
        prompt = self.encode_prompt(image, guidance)
        cond_lat = self.encode_condition(image, gen, guidance)

        sched = self.scheduler
        sched.set_timesteps(num_inference_steps, device=self.device)
        rows, cols = GRID
        s = self.vae_scale_factor
        channels = self.unet.config.in_channels
        shape = (1, channels, rows * tile_size // s, cols * tile_size // s)
        latents = randn(shape, gen, self.device, torch.float32) * sched.init_noise_sigma
        timesteps = sched.timesteps
        with self.placement.use(self.unet):
            for i, t in enumerate(timesteps):
                x = torch.cat([latents] * 2) if guidance else latents
                x = sched.scale_model_input(x, t).to(self.dtype)
                v = self._unet(x, t, prompt, cond_lat, gen, reference_attention).float()
                if guidance:
                    v_u, v_c = v.chunk(2)
                    v = v_u + guidance_scale * (v_c - v_u)
                latents = sched.step(v, t, latents, generator=gen, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        grid = self.decode(latents)[0]
        return Zero123PlusOutput(grid=grid, views=grid_to_views(grid))
