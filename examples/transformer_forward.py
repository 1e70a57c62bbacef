"""One denoising forward of the Helios transformer, called directly.

    python examples/transformer_forward.py                  # the built-in helios-tiny
    python examples/transformer_forward.py path/to/transformer   # a diffusers-format folder
"""

import sys

import torch

from helios_serve.model_executor import HeliosTransformer

source = sys.argv[1] if len(sys.argv) > 1 else None
if source:
    model = HeliosTransformer.from_pretrained(source, dtype=torch.float32)
else:
    model = HeliosTransformer.from_preset("helios-tiny", seed=0)

# A 96x160 video chunk: 9 latent frames of 12x20, a full history at the same resolution.
g = torch.Generator().manual_seed(0)
latents = torch.randn(2, 16, 9, 12, 20, generator=g)  # two requests in one batch
history = {
    "latents_history_short": torch.randn(2, 16, 2, 12, 20, generator=g),  # [anchor, last latent]
    "latents_history_mid": torch.randn(2, 16, 2, 12, 20, generator=g),
    "latents_history_long": torch.randn(2, 16, 16, 12, 20, generator=g),
    "indices_latents_history_short": torch.tensor([[0, 19]]),
    "indices_latents_history_mid": torch.tensor([[17, 18]]),
    "indices_latents_history_long": torch.arange(1, 17)[None],
}
text = torch.randn(2, 512, model.config.text_dim, generator=g)

with torch.inference_mode():
    velocity = model(
        latents,
        timestep=torch.tensor([998, 385]),  # each request at its own denoising step
        encoder_hidden_states=text,
        indices_hidden_states=torch.arange(20, 29)[None],
        **history,
    )
print(f"velocity {tuple(velocity.shape)}, std {velocity.std():.3f}")
