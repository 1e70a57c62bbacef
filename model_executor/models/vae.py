"""Latent <-> pixel decoders: the Wan-2.1 VAE and a fast linear preview decoder (spec §5.2).

Both turn normalised latents [1, 16, T, h, w] of one chunk into uint8 frames
[1 + 4 (T - 1), 8 h, 8 w, 3] (``decode_frames``): the first latent frame gives one frame,
each further one four.
"""

from __future__ import annotations

import torch

from ..device import to_device, to_host

SPATIAL_SCALE, TEMPORAL_SCALE = 8, 4


class WanVAE:
    """diffusers' AutoencoderKLWan with the checkpoint's latent statistics.

    Encoding always runs in fp32 (the conditioning latents feed every later number); decoding
    may run in bf16 (``decode_dtype``): its output is quantised to uint8 frames, and the
    half-width convolutions nearly halve the decode's time on a GPU.
    """

    def __init__(self, vae, decode_dtype: torch.dtype = torch.float32):
        self.vae = vae.eval()
        self.decode_dtype = decode_dtype
        if decode_dtype != next(vae.parameters()).dtype:
            vae.post_quant_conv.to(decode_dtype)
            vae.decoder.to(decode_dtype)
        param = next(vae.encoder.parameters())
        shape = (1, vae.config.z_dim, 1, 1, 1)
        self.mean = torch.tensor(vae.config.latents_mean).view(shape).to(param.device, param.dtype)
        # The reference stores 1/std and divides by it when decoding; kept so for identical rounding.
        self.inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(param.device, param.dtype)

    @classmethod
    def from_pretrained(cls, folder, device, decode_dtype: torch.dtype = torch.float32) -> WanVAE:
        from diffusers import AutoencoderKLWan

        return cls(AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch.float32).to(device), decode_dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.mean.dtype

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Normalised latents of pixels [B, 3, T, H, W], sampled from the posterior with ``generator``."""
        pixels = to_device(pixels.to(self.dtype), self.mean.device)
        latents = self.vae.encode(pixels).latent_dist.sample(generator=generator)
        return (latents - self.mean) * self.inv_std

    def latent_shape(self, pixels_shape) -> tuple[int, ...]:
        """The latents' shape for pixels of shape [B, 3, T, H, W]: 4x fewer frames (after the
        first), 8x smaller sides."""
        batch, _, frames, height, width = pixels_shape
        return (batch, self.vae.config.z_dim, 1 + (frames - 1) // 4, height // 8, width // 8)

    def draw_posterior_noise(self, latent_shape: tuple[int, ...], generator: torch.Generator) -> None:
        """Draw from ``generator`` exactly what ``encode`` of pixels with these latents draws
        (the posterior sample's noise), without encoding anything."""
        from diffusers.utils.torch_utils import randn_tensor

        randn_tensor(latent_shape, generator=generator, device=self.mean.device, dtype=self.dtype)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], [B, 3, T', H, W] (in ``decode_dtype``); de-normalised in fp32."""
        latents = latents.to(device=self.mean.device, dtype=self.dtype) / self.inv_std + self.mean
        return self.vae.decode(latents.to(self.decode_dtype), return_dict=False)[0]

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        return to_uint8_frames(self.decode(latents))


class PreviewDecoder:
    """Per-channel linear map from the 16 latent channels to RGB, upsampled 8x in space and 4x in time.

    Orders of magnitude cheaper than the VAE: for low-latency previews of real models and as
    the decoder of helios-tiny. ``fit`` derives the map from a VAE by least squares.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight = weight.float()  # [3, 16]
        self.bias = bias.float()  # [3]

    def to(self, device) -> PreviewDecoder:
        """The same map with its weights on ``device`` (where the latents it decodes live)."""
        return PreviewDecoder(self.weight.to(device), self.bias.to(device))

    @classmethod
    def seeded(cls, seed: int, channels: int = 16) -> PreviewDecoder:
        g = torch.Generator().manual_seed(seed)
        return cls(torch.randn(3, channels, generator=g) * 0.25, torch.zeros(3))

    @classmethod
    @torch.inference_mode()
    def fit(cls, vae: WanVAE, seed: int = 0, size: int = 8) -> PreviewDecoder:
        """Least-squares fit of the VAE's decoded colours on its latents (one latent frame); on the
        host, once at load (``to`` moves the map to where the latents are)."""
        g = torch.Generator().manual_seed(seed)
        latents = torch.randn(1, vae.vae.config.z_dim, 1, size, size, generator=g)
        pixels = to_host(vae.decode(latents).float())  # [1, 3, 1, 8 size, 8 size]
        pooled = torch.nn.functional.avg_pool2d(pixels[:, :, 0], SPATIAL_SCALE)[0]  # [3, size, size]
        design = torch.cat([latents[0, :, 0].reshape(latents.shape[1], -1), torch.ones(1, size * size)])
        solution = torch.linalg.lstsq(design.T, pooled.reshape(3, -1).T).solution  # [17, 3]
        return cls(solution[:-1].T, solution[-1])

    def _colours(self, latents: torch.Tensor) -> torch.Tensor:
        """RGB in [-1, 1] at latent resolution, [B, 3, T, h, w]."""
        x = latents.float()
        rgb = torch.einsum("oc,bcthw->bothw", self.weight, x) + self.bias.view(1, 3, 1, 1, 1)
        return rgb.clamp(-1, 1)

    @staticmethod
    def _upsample(x: torch.Tensor, dims: tuple[int, int, int]) -> torch.Tensor:
        """Repeat the first frame once and every other frame 4x along ``dims[0]``; 8x along the others."""
        time_dim, height_dim, width_dim = dims
        first, rest = x.narrow(time_dim, 0, 1), x.narrow(time_dim, 1, x.shape[time_dim] - 1)
        x = torch.cat([first, rest.repeat_interleave(TEMPORAL_SCALE, dim=time_dim)], dim=time_dim)
        return x.repeat_interleave(SPATIAL_SCALE, dim=height_dim).repeat_interleave(SPATIAL_SCALE, dim=width_dim)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], [B, 3, T', H, W]."""
        return self._upsample(self._colours(latents), dims=(2, 3, 4))

    def decode_frames(self, latents: torch.Tensor) -> torch.Tensor:
        # Quantised at latent resolution and upsampled as uint8: 64x less memory traffic than
        # upsampling floats, and the same frames (nearest upsampling commutes with rounding).
        return self._upsample(to_uint8_frames(self._colours(latents)), dims=(0, 1, 2))


def to_uint8_frames(pixels: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] on the same device, rounded as diffusers'
    postprocessing (uint8 is what crosses to the host: a quarter of the float bytes).

    Works in place on one float copy: decoded chunks are large and this runs per chunk.
    """
    frames = pixels[0].float().clone() if pixels.dtype == torch.float32 else pixels[0].float()
    frames.div_(2).add_(0.5).clamp_(0, 1).mul_(255).round_()
    return frames.to(torch.uint8).permute(1, 2, 3, 0).contiguous()
