"""Our HeliosTransformer against diffusers' HeliosTransformer3DModel (the reference)."""

from __future__ import annotations

import pytest
import torch

from helios_serve.model_executor import HeliosTransformer

LATENT_HEIGHT, LATENT_WIDTH = 16, 24  # full-resolution latent grid (history is always at this size)
PYRAMID_RESOLUTIONS = [(16, 24), (8, 12), (4, 6)]  # noisy chunk at pyramid stages 2, 1, 0
TEXT_LENGTH = 7
# max |ours - reference| / max |reference|, in fp32
TOLERANCE = 1e-5


def make_inputs(batch, height, width, text_dim, seed, zero_history=False, history_frames=(2, 2, 16)):
    g = torch.Generator().manual_seed(seed)
    short, mid, long = history_frames

    def history(frames):
        shape = (batch, 16, frames, LATENT_HEIGHT, LATENT_WIDTH)
        return torch.zeros(shape) if zero_history else torch.randn(shape, generator=g)

    return dict(
        hidden_states=torch.randn(batch, 16, 9, height, width, generator=g),
        timestep=torch.randint(0, 1000, (batch,), generator=g),
        encoder_hidden_states=torch.randn(batch, TEXT_LENGTH, text_dim, generator=g),
        latents_history_short=history(short),
        latents_history_mid=history(mid),
        latents_history_long=history(long),
        indices_hidden_states=torch.arange(20, 29)[None],
        indices_latents_history_short=torch.tensor([[0, 19]]),
        indices_latents_history_mid=torch.arange(19 - mid, 19)[None],
        indices_latents_history_long=torch.arange(1, 1 + long)[None],
    )


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours - reference).abs().max() / reference.abs().max()).item()


@torch.no_grad()
def run_reference(reference, inputs):
    return reference(**inputs, return_dict=False)[0]


@pytest.fixture
def pair(save_reference):
    reference, folder = save_reference(seed=0)
    return reference, HeliosTransformer.from_pretrained(folder, dtype=torch.float32)


@pytest.mark.parametrize("height,width", PYRAMID_RESOLUTIONS)
@pytest.mark.parametrize("zero_history", [True, False], ids=["t2v-first-chunk", "with-history"])
def test_matches_reference(pair, height, width, zero_history):
    reference, ours = pair
    inputs = make_inputs(1, height, width, 24, seed=height, zero_history=zero_history)
    expected = run_reference(reference, inputs)
    with torch.no_grad():
        actual = ours(**inputs)
    assert actual.shape == expected.shape == inputs["hidden_states"].shape
    error = relative_error(actual, expected)
    print(f"parity {height}x{width} zero_history={zero_history}: {error:.2e}")
    assert error <= TOLERANCE


@pytest.mark.parametrize("height,width", PYRAMID_RESOLUTIONS)
def test_batch_of_different_requests_equals_separate_calls(pair, height, width):
    """B=3 samples with their own timesteps, histories and texts in one forward."""
    reference, ours = pair
    inputs = make_inputs(3, height, width, 24, seed=7)
    inputs["timestep"] = torch.tensor([999, 500, 3])
    with torch.no_grad():
        batched = ours(**inputs)
    for i in range(3):
        single = {k: (v[i : i + 1] if k in _PER_SAMPLE else v) for k, v in inputs.items()}
        expected = run_reference(reference, single)
        with torch.no_grad():
            ours_single = ours(**single)
        error = relative_error(batched[i : i + 1], expected)
        print(f"batched sample {i} at {height}x{width}: {error:.2e} vs reference")
        assert error <= TOLERANCE
        # Batch invariance: on CPU a request's output does not depend on its batch mates at all.
        assert torch.equal(batched[i : i + 1], ours_single)


_PER_SAMPLE = {
    "hidden_states",
    "timestep",
    "encoder_hidden_states",
    "latents_history_short",
    "latents_history_mid",
    "latents_history_long",
}


def test_float_timesteps(pair):
    """The Base pipeline feeds float timesteps; the pyramid pipelines feed int64."""
    reference, ours = pair
    inputs = make_inputs(2, 8, 12, 24, seed=3)
    inputs["timestep"] = torch.tensor([999.853, 121.995])
    with torch.no_grad():
        assert relative_error(ours(**inputs), run_reference(reference, inputs)) <= TOLERANCE


def test_history_key_amplification(save_reference):
    reference, folder = save_reference(seed=1, is_amplify_history=True)
    with torch.no_grad():
        for block in reference.blocks:  # move the gains away from their init
            block.attn1.history_key_scale.copy_(torch.linspace(-2, 3, block.attn1.history_key_scale.numel()))
    reference.save_pretrained(folder, max_shard_size="20KB")
    ours = HeliosTransformer.from_pretrained(folder, dtype=torch.float32)
    assert ours.blocks[0].self_attn.history_key_scale is not None
    inputs = make_inputs(2, 8, 12, 24, seed=5)
    with torch.no_grad():
        error = relative_error(ours(**inputs), run_reference(reference, inputs))
    print(f"history-key amplification: {error:.2e}")
    assert error <= TOLERANCE


def test_ragged_history_uses_replicate_padding(pair):
    """History sizes that are not multiples of the mid/long kernels go through the padding path."""
    reference, ours = pair
    inputs = make_inputs(1, 8, 12, 24, seed=11, history_frames=(2, 3, 6))
    for key in ("latents_history_short", "latents_history_mid", "latents_history_long"):
        inputs[key] = inputs[key][..., :12, :20]  # 12x20 is not a multiple of 8
    with torch.no_grad():
        error = relative_error(ours(**inputs), run_reference(reference, inputs))
    assert error <= TOLERANCE


def test_without_history(pair):
    reference, ours = pair
    inputs = make_inputs(1, 8, 12, 24, seed=2)
    for key in [k for k in inputs if "history" in k]:
        inputs[key] = None
    with torch.no_grad():
        assert relative_error(ours(**inputs), run_reference(reference, inputs)) <= TOLERANCE


def test_bf16_follows_reference_precision(save_reference):
    """In bf16 the fp32 islands stay fp32 exactly where diffusers keeps them."""
    from diffusers import HeliosTransformer3DModel

    _, folder = save_reference(seed=4)
    reference = HeliosTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16).eval()
    ours = HeliosTransformer.from_pretrained(folder, dtype=torch.bfloat16)
    from helios_serve.model_executor.loader import checkpoint_names

    reference_dtypes = {name: p.dtype for name, p in reference.named_parameters()}
    for name, param in ours.named_parameters():
        assert {reference_dtypes[n] for n in checkpoint_names(name)} == {param.dtype}, name
    inputs = make_inputs(2, 8, 12, 24, seed=6)
    inputs["encoder_hidden_states"] = inputs["encoder_hidden_states"].bfloat16()
    inputs["hidden_states"] = inputs["hidden_states"].bfloat16()
    for key in [k for k in inputs if k.startswith("latents_history")]:
        inputs[key] = inputs[key].bfloat16()
    with torch.no_grad():
        actual = ours(**inputs)
        expected = run_reference(reference, inputs)
    assert actual.dtype == expected.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa; fused vs separate projections round differently.
    assert relative_error(actual.float(), expected.float()) <= 3e-2
