"""Tiny random-initialised multi-view model folders for the tests (built from configs, no
downloads): a Zero123++ diffusers-layout folder and an SV3D folder (single-file ``sgm``
checkpoint with the original key names, as ``stabilityai/sv3d`` ships it).

Sizes: 32-64 channels, one or two layers per block, 32 px tiles; a full ``gen`` run with
them takes seconds on a CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# CLIP-style constants of the released processors (the tiny ones only change the sizes)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

TILE = 32  # tiny view size (released: 320)
COND = 32  # tiny condition image for the VAE (released: 512)
CLIP_SIZE = 32  # tiny CLIP image size (released: 224)
DIM = 32  # tiny cross-attention / CLIP width (released: 1024)


def _processor(size: int, resample: int, mean, std) -> dict:
    return {
        "crop_size": {"height": size, "width": size},
        "do_center_crop": True,
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": mean,
        "image_std": std,
        "resample": resample,
        "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size},
    }


def tiny_unet(seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=DIM,
        attention_head_dim=8,
        norm_num_groups=8,
        use_linear_projection=True,
    )


def tiny_vae(seed: int = 1):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=COND,
        scaling_factor=0.18215,
    )


def tiny_tokenizer():
    from transformers import CLIPTokenizer

    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for i, c in enumerate("abcdefghijklmnopqrstuvwxyz"):
        vocab[c] = 3 + i
        vocab[c + "</w>"] = 29 + i
    tok = CLIPTokenizer(vocab=vocab, merges=[], pad_token="!")
    tok.model_max_length = 77
    return tok


def tiny_text_encoder(seed: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=64,
        hidden_size=DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        projection_dim=DIM,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return CLIPTextModel(cfg)


def tiny_vision_encoder(seed: int = 3):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_SIZE,
        patch_size=8,
        projection_dim=DIM,
    )
    return CLIPVisionModelWithProjection(cfg)


def ramp() -> list[float]:
    """77 coefficients shaped like v1.2's (small first entry, rising to ~0.5)."""
    return [0.003] + [0.2 + 0.3 * i / 75 for i in range(76)]


def build_zero123pp(folder: Path, seed: int = 0) -> Path:
    """A tiny Zero123++ folder in the ``sudo-ai/zero123plus-v1.2`` layout."""
    from diffusers import EulerAncestralDiscreteScheduler

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tiny_unet(seed).save_pretrained(folder / "unet")
    tiny_vae(seed + 1).save_pretrained(folder / "vae")
    tiny_text_encoder(seed + 2).save_pretrained(folder / "text_encoder")
    tiny_vision_encoder(seed + 3).save_pretrained(folder / "vision_encoder")
    tiny_tokenizer().save_pretrained(folder / "tokenizer")
    EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        prediction_type="v_prediction",
        steps_offset=1,
        timestep_spacing="linspace",
    ).save_pretrained(folder / "scheduler")
    for name, size, resample, mean, std in (
        ("feature_extractor_clip", CLIP_SIZE, 3, CLIP_MEAN, CLIP_STD),
        ("feature_extractor_vae", COND, 2, [0.5, 0.5, 0.5], [0.8, 0.8, 0.8]),
    ):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "preprocessor_config.json").write_text(
            json.dumps(_processor(size, resample, mean, std), indent=1)
        )
    index = {
        "_class_name": "Zero123PlusPipeline",
        "_diffusers_version": "0.24.0",
        "feature_extractor_clip": ["transformers", "CLIPImageProcessor"],
        "feature_extractor_vae": ["transformers", "CLIPImageProcessor"],
        "ramping_coefficients": ramp(),
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "vision_encoder": ["transformers", "CLIPVisionModelWithProjection"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def white_unet_file(path: Path, seed: int = 10) -> Path:
    """A replacement UNet state dict saved like InstantMesh's (fp16 plain-tensor pickle)."""
    sd = {k: v.half() for k, v in tiny_unet(seed).state_dict().items()}
    torch.save(sd, path)
    return path


# --------------------------------------------------------------------------------------------
# SV3D: a tiny single-file checkpoint with the original (sgm) key names

SV3D_SIZE = 32  # tiny SV3D frame size (released: 576)

SV3D_TINY_CONFIG = {
    "unet": {
        "sample_size": 8,
        "block_out_channels": [32, 64],
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"],
        "layers_per_block": 1,
        "cross_attention_dim": DIM,
        "num_attention_heads": [2, 4],
    },
    "vae": {
        "down_block_types": ["DownEncoderBlock2D"] * 3,
        "up_block_types": ["UpDecoderBlock2D"] * 3,
        "block_out_channels": [16, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": SV3D_SIZE,
    },
    "image_encoder": {
        "hidden_size": DIM,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "patch_size": 8,
        "image_size": CLIP_SIZE,
        "projection_dim": DIM,
    },
}


def _sgm_res(rest: str) -> str:
    """diffusers SpatioTemporalResBlock key -> sgm VideoResBlock key (written independently of
    the pipeline's mapping, from the sgm module layout)."""
    names = {
        "norm1": "in_layers.0",
        "conv1": "in_layers.2",
        "time_emb_proj": "emb_layers.1",
        "norm2": "out_layers.0",
        "conv2": "out_layers.3",
        "conv_shortcut": "skip_connection",
    }
    head, _, tail = rest.partition(".")
    if head == "time_mixer":
        return rest
    sub, _, leaf = tail.partition(".")
    out = names[sub] + "." + leaf
    return out if head == "spatial_res_block" else "time_stack." + out


def _sgm_tr(rest: str) -> str:
    rest = rest.replace("temporal_transformer_blocks.", "time_stack.")
    rest = rest.replace("time_pos_embed.linear_1.", "time_pos_embed.0.")
    return rest.replace("time_pos_embed.linear_2.", "time_pos_embed.2.")


def sgm_unet_name(key: str, cfg: dict) -> str:
    """diffusers UNetSpatioTemporalConditionModel key -> sgm ``model.diffusion_model.*`` key."""
    import re

    per = cfg["layers_per_block"] + 1
    up_attn = [t.startswith("CrossAttn") for t in cfg["up_block_types"]]
    fixed = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in fixed.items():
        if key.startswith(old):
            return "model.diffusion_model." + new + key[len(old) :]
    m = re.fullmatch(
        r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)", key
    )
    if m:
        kind, b, part, j, rest = (
            m.group(1),
            int(m.group(2)),
            m.group(3),
            int(m.group(4)),
            m.group(5),
        )
        if kind == "down":
            if part == "downsamplers":
                idx, name = 1 + b * per + per - 1, "0.op." + rest[len("conv.") :]
            else:
                idx = 1 + b * per + j
                name = "0." + _sgm_res(rest) if part == "resnets" else "1." + _sgm_tr(rest)
            return f"model.diffusion_model.input_blocks.{idx}.{name}"
        if part == "upsamplers":
            idx, name = b * per + per - 1, f"{2 if up_attn[b] else 1}.{rest}"
        else:
            idx = b * per + j
            name = "0." + _sgm_res(rest) if part == "resnets" else "1." + _sgm_tr(rest)
        return f"model.diffusion_model.output_blocks.{idx}.{name}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        if m.group(1) == "resnets":
            return (
                f"model.diffusion_model.middle_block.{2 * int(m.group(2))}.{_sgm_res(m.group(3))}"
            )
        return f"model.diffusion_model.middle_block.1.{_sgm_tr(m.group(3))}"
    raise KeyError(key)


def sgm_vae_names(sd: dict, levels: int) -> dict:
    """diffusers AutoencoderKL (no post_quant_conv) -> sgm/LDM names: the decoder under
    ``first_stage_model.decoder``, the encoder + quant_conv under
    ``conditioner.embedders.1.encoder``; attention projections as 1x1 convolutions."""
    import re

    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for key, v in sd.items():
        if key.startswith("quant_conv."):
            out["conditioner.embedders.1.encoder." + key] = v
            continue
        part, _, rest = key.partition(".")
        rest = rest.replace("conv_norm_out.", "norm_out.").replace(
            "conv_shortcut.", "nin_shortcut."
        )
        m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.*)", rest)
        if m:
            rest = f"mid.block_{int(m.group(1)) + 1}.{m.group(2)}"
        m = re.fullmatch(
            r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", rest
        )
        if m:
            rest = f"mid.attn_1.{attn[m.group(1)]}.{m.group(2)}"
            if rest.endswith("weight") and v.ndim == 2:
                v = v[:, :, None, None]
        m = re.fullmatch(
            r"(down|up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.*)", rest
        )
        if m:
            lvl = int(m.group(2)) if m.group(1) == "down" else levels - 1 - int(m.group(2))
            if m.group(3) == "resnets":
                rest = f"{m.group(1)}.{lvl}.block.{m.group(4)}.{m.group(5)}"
            else:
                rest = f"{m.group(1)}.{lvl}.{m.group(1)}sample.{m.group(5)}"
        prefix = (
            "first_stage_model.decoder."
            if part == "decoder"
            else "conditioner.embedders.1.encoder.encoder."
        )
        out[prefix + rest] = v
    return out


def openclip_names(sd: dict) -> dict:
    """transformers CLIPVisionModelWithProjection -> OpenCLIP ``visual.*`` under the sgm prefix."""
    import re

    p = "conditioner.embedders.0.open_clip.model.visual."
    out = {}
    qkv: dict[str, dict] = {}
    for key, v in sd.items():
        k = key.replace("vision_model.", "")
        if k == "embeddings.position_ids":
            continue
        simple = {
            "embeddings.class_embedding": "class_embedding",
            "embeddings.position_embedding.weight": "positional_embedding",
            "embeddings.patch_embedding.weight": "conv1.weight",
        }
        if k in simple:
            out[p + simple[k]] = v
        elif k == "visual_projection.weight":
            out[p + "proj"] = v.t().contiguous()
        elif k.startswith("pre_layrnorm."):
            out[p + "ln_pre." + k.split(".")[-1]] = v
        elif k.startswith("post_layernorm."):
            out[p + "ln_post." + k.split(".")[-1]] = v
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.*)", k)
            i, rest = m.group(1), m.group(2)
            m2 = re.fullmatch(r"self_attn\.([qkv])_proj\.(weight|bias)", rest)
            if m2:
                qkv.setdefault(f"{i}.{m2.group(2)}", {})[m2.group(1)] = v
                continue
            names = {
                "self_attn.out_proj.": "attn.out_proj.",
                "layer_norm1.": "ln_1.",
                "layer_norm2.": "ln_2.",
                "mlp.fc1.": "mlp.c_fc.",
                "mlp.fc2.": "mlp.c_proj.",
            }
            for old, new in names.items():
                if rest.startswith(old):
                    out[f"{p}transformer.resblocks.{i}.{new}{rest[len(old) :]}"] = v
    for ik, parts in qkv.items():
        i, kind = ik.split(".")
        out[f"{p}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]]
        )
    return out


def tiny_sv3d_modules(seed: int = 20):
    """The tiny SV3D UNet, VAE and CLIP image encoder as diffusers / transformers modules."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipelines.multiview import sv3d

    torch.manual_seed(seed)
    unet = sv3d.SV3DUNet.from_config({**sv3d.UNET_CONFIG, **SV3D_TINY_CONFIG["unet"]})
    vae = AutoencoderKL.from_config({**sv3d.VAE_CONFIG, **SV3D_TINY_CONFIG["vae"]})
    clip = CLIPVisionModelWithProjection(
        CLIPVisionConfig(**{**sv3d.CLIP_CONFIG, **SV3D_TINY_CONFIG["image_encoder"]})
    )
    # the mix factors start at 0.5 exactly; perturb them so a mix-up would show
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if name.endswith("mix_factor"):
                p.uniform_(-1, 1)
    return unet, vae, clip


def build_sv3d(folder: Path, seed: int = 20, extra: dict | None = None) -> Path:
    """A folder with a tiny ``sv3d_p.safetensors`` in the original naming and the
    ``sv3d_config.json`` describing its (tiny) architecture."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, clip = tiny_sv3d_modules(seed)
    cfg = dict(unet.config)
    sd = {sgm_unet_name(k, cfg): v for k, v in unet.state_dict().items()}
    sd.update(sgm_vae_names(vae.state_dict(), len(SV3D_TINY_CONFIG["vae"]["block_out_channels"])))
    sd.update(openclip_names(clip.state_dict()))
    # tensors the loader must ignore: the conditioner VAE's own decoder, the text tower, ...
    sd["conditioner.embedders.1.encoder.post_quant_conv.weight"] = torch.zeros(4, 4, 1, 1)
    sd["conditioner.embedders.1.encoder.decoder.conv_in.weight"] = torch.zeros(1)
    sd["conditioner.embedders.0.open_clip.model.logit_scale"] = torch.zeros(())
    sd.update(extra or {})
    sd = {k: v.contiguous() for k, v in sd.items()}
    save_file(sd, str(folder / "sv3d_p.safetensors"))
    (folder / "sv3d_config.json").write_text(json.dumps(SV3D_TINY_CONFIG, indent=1))
    return folder


# --------------------------------------------------------------------------------------------
# released-size random models (GPU timing only)


def released_zero123pp(device: str, dtype: torch.dtype, small: bool = False):
    """A Zero123PlusPipeline with random weights of the released sizes (SD2 v-prediction UNet,
    SD VAE, OpenCLIP-H text and ViT-H/14 vision towers); ``small`` swaps in the tiny
    configs (to check this code path on a CPU)."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from pipelines.multiview._common import ImageProcessor
    from pipelines.multiview.zero123pp import Zero123PlusPipeline

    with torch.device(device):
        if small:
            unet, vae = tiny_unet(), tiny_vae()
            text, vision = tiny_text_encoder(), tiny_vision_encoder()
            clip_size, cond = CLIP_SIZE, COND
        else:
            unet = UNet2DConditionModel(
                sample_size=96,
                block_out_channels=(320, 640, 1280, 1280),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                layers_per_block=2,
                cross_attention_dim=1024,
                attention_head_dim=(5, 10, 20, 20),
                use_linear_projection=True,
            )
            vae = AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                sample_size=512,
            )
            text = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=49408,
                    hidden_size=1024,
                    intermediate_size=4096,
                    num_hidden_layers=23,
                    num_attention_heads=16,
                    max_position_embeddings=77,
                    hidden_act="gelu",
                    projection_dim=512,
                )
            )
            vision = CLIPVisionModelWithProjection(
                CLIPVisionConfig(
                    hidden_size=1280,
                    intermediate_size=5120,
                    num_hidden_layers=32,
                    num_attention_heads=16,
                    patch_size=14,
                    image_size=224,
                    projection_dim=1024,
                    hidden_act="gelu",
                )
            )
            clip_size, cond = 224, 512
    sched = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="linear",
        prediction_type="v_prediction",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    for m in (unet, text, vision):
        m.to(dtype)
    return Zero123PlusPipeline(
        unet.eval(),
        vae.eval(),
        text.eval(),
        tiny_tokenizer(),
        vision.eval(),
        sched,
        ImageProcessor(clip_size, clip_size, 3),
        ImageProcessor(cond, cond, 2, (0.5,) * 3, (0.8,) * 3),
        [0.003] + [0.3] * 76,
        device=device,
        dtype=dtype,
    )


def released_sv3d(device: str, dtype: torch.dtype, small: bool = False):
    """An SV3DPipeline with random weights of the released sizes (``small``: tiny configs)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from pipelines.multiview import sv3d

    over = SV3D_TINY_CONFIG if small else {}
    with torch.device(device):
        unet = sv3d.SV3DUNet.from_config({**sv3d.UNET_CONFIG, **over.get("unet", {})})
        vae = AutoencoderKL.from_config({**sv3d.VAE_CONFIG, **over.get("vae", {})})
        clip = CLIPVisionModelWithProjection(
            CLIPVisionConfig(**{**sv3d.CLIP_CONFIG, **over.get("image_encoder", {})})
        )
    unet.to(dtype)
    clip.to(dtype)
    return sv3d.SV3DPipeline(unet.eval(), vae.eval(), clip.eval(), device=device, dtype=dtype)
