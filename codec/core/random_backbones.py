"""Backbone folders with random weights in real architectures, for tests and benchmarks without downloads.

`save_random_backbone(kind, folder)` writes what the local-folder path of `load_backbone` reads:
vae/, unet/, scheduler/ (written by save_pretrained) and conditioning.safetensors, a random tensor
standing in for the cached empty-prompt conditioning. "sd-2-1-base" and "sd-2-1" are Stable
Diffusion 2.1's exact UNet (865M parameters) and AutoencoderKL (84M), so memory, speed and codec
overhead can be measured at Stable Diffusion's size; "tiny" is `tiny_components` (the test models).

    python -m codec.core.random_backbones sd-2-1-base OUT_DIR [--dtype float16]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from codec.core.backbone import CONDITIONING_FILE, SD_SCHEDULE, cast, default_device_dtype, tiny_components

# The published configs, field by field as in huggingface.co/stabilityai/stable-diffusion-2-1-base
# (unet/config.json, vae/config.json, scheduler/scheduler_config.json) and .../stable-diffusion-2-1
# (the 768 model: the same UNet with sample_size 96 and upcast_attention, a v-prediction schedule).
SD21_UNET = dict(
    act_fn="silu", attention_head_dim=[5, 10, 20, 20], block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=1024,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    downsample_padding=1, dual_cross_attention=False, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-05, norm_num_groups=32, num_class_embeds=None,
    only_cross_attention=False, out_channels=4, sample_size=64,
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    upcast_attention=False, use_linear_projection=True,
)
SD21_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    in_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32, out_channels=3,
    sample_size=512, scaling_factor=0.18215,
)
# A PNDMScheduler config, as shipped: SD_SCHEDULE's values plus PNDM's own keys (the codec reads the
# schedule with DDIM).
SD21_SCHEDULER = {**SD_SCHEDULE, "skip_prk_steps": True, "trained_betas": None}
SD_CONDITIONING_SHAPE = (1, 77, 1024)  # OpenCLIP ViT-H's output for the empty prompt

KINDS = {
    "sd-2-1-base": dict(unet=SD21_UNET, vae=SD21_VAE, scheduler=SD21_SCHEDULER),
    "sd-2-1": dict(unet={**SD21_UNET, "sample_size": 96, "upcast_attention": True},
                   vae={**SD21_VAE, "sample_size": 768},
                   scheduler={**SD21_SCHEDULER, "prediction_type": "v_prediction"}),
    "tiny": None,
}


def save_random_backbone(kind: str, folder: str | Path, dtype=torch.float32, seed: int = 0) -> Path:
    """Write a `kind` backbone with random weights, stored in `dtype`, to `folder`; returns the folder.

    Storing in float16 halves the disk and the write time (1.7 GB instead of 3.5 GB for SD's UNet);
    the fingerprint is the same either way (codec/core/backbone.py `weights_fingerprint`).
    """
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from safetensors.torch import save_file

    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}; known: {', '.join(KINDS)}.")
    _, dtype = default_device_dtype("cpu", dtype)
    folder = Path(folder)
    torch.manual_seed(seed)
    if kind == "tiny":
        vae, unet, _, scheduler = tiny_components(seed)
    else:
        configs = KINDS[kind]
        vae, unet = AutoencoderKL(**configs["vae"]), UNet2DConditionModel(**configs["unet"])
        scheduler = PNDMScheduler.from_config(configs["scheduler"])  # it ignores clip_sample, as when SD loads
        _calibrate_scaling_factor(vae)
    conditioning = torch.randn(1, 77, unet.config.cross_attention_dim)
    for name, model in (("vae", vae), ("unet", unet)):
        cast(model, dtype).save_pretrained(folder / name)  # in place: no second copy of SD's 3.5 GB UNet
    scheduler.save_pretrained(folder / "scheduler")
    save_file({"conditioning": conditioning.contiguous()}, folder / CONDITIONING_FILE)
    return folder


@torch.no_grad()
def _calibrate_scaling_factor(vae) -> None:
    """Random weights give latents of std ~0.3 where SD's trained VAE gives ~5.5 (hence its 0.18215).
    The codec matches quantization noise to diffusion noise in units of unit-variance latents, so the
    random VAE gets the factor that makes its latents unit-variance, as SD's was chosen; with 0.18215
    every rate would pick t = 0 and no denoising step would run."""
    z = vae.encode(torch.rand(1, 3, 256, 256) * 2 - 1).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / z.std()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codec.core.random_backbones", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=list(KINDS))
    parser.add_argument("out", help="folder to write (load it with --backbone OUT)")
    parser.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"],
                        help="dtype the weights are stored in (default float16: half the disk)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    save_random_backbone(args.kind, args.out, args.dtype, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
