"""The demo backbone's autoencoder: a small, fast VAE-like model with SD's geometry (/8, 4 channels).

Why this shape: plain autoencoders trained from scratch on 2 CPU cores stay far below the trivial
"box-downsample by 8 + bicubic upsample" reference for hours. So this model *starts* as exactly
that reference and only learns residuals:

- encode: latent channels 0-2 = the 8x8 box average of the image (+ a learned residual, zero at
  init); channel 3 = learned detail. The learned path sees each 8x8 block losslessly through a
  pixel-unshuffle, then mixes neighbouring blocks with 3x3 convolutions at 1/8 resolution.
- decode: bicubic upsample of channels 0-2 + a learned residual computed from all 4 channels
  through pixel-shuffle stages (1/8 -> 1/4 -> 1/2 -> 1); the last conv is zero at init.

The API mimics diffusers' AutoencoderTiny (encode -> .latents, decode -> .sample, both in [-1, 1]),
so the codec treats it like any other backbone VAE. Latents are unscaled; `scaling_factor` in the
config is measured from the training data so that `z * scaling_factor` has unit std.
"""

import torch
import torch.nn.functional as F
from torch import nn

from codec.core import lean_imports

lean_imports.prepare_diffusers()  # before the first diffusers import: only the modules named below

from diffusers.configuration_utils import ConfigMixin, register_to_config  # noqa: E402
from diffusers.models.autoencoders.autoencoder_tiny import AutoencoderTinyOutput  # noqa: E402
from diffusers.models.autoencoders.vae import DecoderOutput  # noqa: E402
from diffusers.models.modeling_utils import ModelMixin  # noqa: E402

DOWNSCALE = 8


class ResBlock(nn.Module):
    """conv-relu-conv with a skip; the second conv starts at zero so the block starts as identity."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class DemoAutoencoder(ModelMixin, ConfigMixin):
    """Residual-on-box/bicubic autoencoder, downsampling 8, `latent_channels` = 4."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        encoder_channels: int = 128,
        encoder_blocks: int = 2,
        decoder_channels: tuple = (128, 64, 32, 16),
        decoder_blocks: tuple = (4, 2, 1, 0),
        scaling_factor: float = 1.0,
    ):
        super().__init__()
        if latent_channels < 4:
            raise ValueError("latent_channels must be >= 4 (3 colour channels + learned detail)")
        if len(decoder_channels) != 4 or len(decoder_blocks) != 4:
            raise ValueError("decoder_channels and decoder_blocks need one entry per scale: 1/8, 1/4, 1/2, 1")
        self.enc_in = nn.Conv2d(3 * DOWNSCALE * DOWNSCALE, encoder_channels, 1)
        self.enc_blocks = nn.Sequential(*[ResBlock(encoder_channels) for _ in range(encoder_blocks)])
        self.enc_out = nn.Conv2d(encoder_channels, latent_channels, 3, padding=1)
        # The colour channels start as the exact box average: their residual starts at zero.
        with torch.no_grad():
            self.enc_out.weight[:3].zero_()
            self.enc_out.bias.zero_()

        self.dec_in = nn.Conv2d(latent_channels, decoder_channels[0], 3, padding=1)
        stages = []
        for i, (channels, blocks) in enumerate(zip(decoder_channels, decoder_blocks)):
            layers = []
            if i > 0:  # upsample x2 from the previous scale
                layers += [nn.Conv2d(decoder_channels[i - 1], 4 * channels, 3, padding=1), nn.PixelShuffle(2), nn.ReLU()]
            layers += [ResBlock(channels) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
        self.dec_stages = nn.Sequential(*stages)
        self.dec_out = nn.Conv2d(decoder_channels[-1], 3, 3, padding=1)
        nn.init.zeros_(self.dec_out.weight)  # starts as plain bicubic upsampling
        nn.init.zeros_(self.dec_out.bias)

    @staticmethod
    def _check_size(h: int, w: int, what: str) -> None:
        if h % DOWNSCALE or w % DOWNSCALE:
            raise ValueError(f"{what} height and width must be multiples of {DOWNSCALE}, got {h}x{w}")

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """x: N x 3 x H x W in [-1, 1] (H, W multiples of 8) -> unscaled latents N x C x H/8 x W/8."""
        self._check_size(x.shape[-2], x.shape[-1], "image")
        base = F.avg_pool2d(x, DOWNSCALE)
        residual = self.enc_out(self.enc_blocks(F.relu(self.enc_in(F.pixel_unshuffle(x, DOWNSCALE)))))
        pad = residual.shape[1] - base.shape[1]
        z = F.pad(base, (0, 0, 0, 0, 0, pad)) + residual
        return AutoencoderTinyOutput(latents=z) if return_dict else (z,)

    def decode_unclamped(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder without the final clamp (clamping would stop gradients during training)."""
        base = F.interpolate(z[:, :3], scale_factor=DOWNSCALE, mode="bicubic", align_corners=False)
        return base + self.dec_out(self.dec_stages(self.dec_in(z)))

    def decode(self, z: torch.Tensor, return_dict: bool = True):
        """Unscaled latents N x C x h x w -> images N x 3 x 8h x 8w in [-1, 1]."""
        # Channels-last: oneDNN's CPU convolutions skip a layout conversion per layer (768x512: 0.64
        # -> 0.43 s CPU, benchmarks/cli_startup.py); pixels move by at most one level, now and then.
        x = self.decode_unclamped(z.contiguous(memory_format=torch.channels_last)).clamp(-1.0, 1.0)
        return DecoderOutput(sample=x) if return_dict else (x,)

    def forward(self, x: torch.Tensor, return_dict: bool = True):
        x_hat = self.decode(self.encode(x).latents).sample
        return DecoderOutput(sample=x_hat) if return_dict else (x_hat,)
