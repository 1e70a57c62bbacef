"""The parts of offline generation: model names, variants, text encoding, decoders, frame counts."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from helios_serve import HeliosEngine, VideoSamplingParams
from helios_serve.model_executor.checkpoint import ModelNotFoundError, read_variant, resolve_model
from helios_serve.model_executor.models.tiny import byte_level_tokenizer, tiny_text_encoder
from helios_serve.model_executor.models.vae import PreviewDecoder
from helios_serve.model_executor.step_io import RequestSpec


def test_alias_resolves_from_the_hugging_face_cache(tmp_path):
    snapshot = tmp_path / "models--BestWishYsh--Helios-Distilled" / "snapshots" / "b991c037"
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    (tmp_path / "models--BestWishYsh--Helios-Distilled" / "refs").mkdir()
    (tmp_path / "models--BestWishYsh--Helios-Distilled" / "refs" / "main").write_text("b991c037")
    assert resolve_model("helios-distilled", download_dir=str(tmp_path)).resolve() == snapshot.resolve()
    assert resolve_model("BestWishYsh/Helios-Distilled", download_dir=str(tmp_path)).resolve() == snapshot.resolve()


def test_unknown_model_says_where_it_looked(tmp_path):
    # Offline (tests/conftest.py): a released model the cache lacks is not downloaded.
    with pytest.raises(ModelNotFoundError) as error:
        resolve_model("helios-mid", download_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message and "hf download BestWishYsh/Helios-Mid" in message
    with pytest.raises(ModelNotFoundError, match="helios-tiny"):
        resolve_model("helios-mdi")
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(ModelNotFoundError, match="no model_index.json"):
        resolve_model(str(tmp_path / "not-a-checkpoint"))


@pytest.mark.parametrize(
    "model_index,scheduler,expected",
    [
        ({"_class_name": "HeliosPipeline"}, {"_class_name": "HeliosScheduler", "stages": 1, "stage_range": [0, 1]}, "base"),
        ({"_class_name": "HeliosPyramidPipeline", "is_cfg_zero_star": True}, {"_class_name": "HeliosScheduler"}, "mid"),
        ({"_class_name": "HeliosPyramidPipeline", "is_distilled": True}, {"_class_name": "HeliosDMDScheduler"}, "distilled"),
    ],
)
def test_variant_is_read_from_the_checkpoint(tmp_path, model_index, scheduler, expected):
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "model_index.json").write_text(json.dumps(model_index))
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    variant = read_variant(tmp_path)
    assert variant.name == expected
    assert variant.default_steps == {"base": (50,), "mid": (20, 20, 20), "distilled": (2, 2, 2)}[expected]
    assert variant.is_cfg_zero_star == (expected == "mid")
    assert variant.sampler.time_shift_type == ("linear" if expected == "distilled" else "exponential")


def test_text_embeddings_match_the_reference_pipeline():
    from diffusers import HeliosPipeline

    encoder = tiny_text_encoder()
    fake_pipeline = type("P", (), {"tokenizer": encoder.tokenizer, "text_encoder": encoder.encoder,
                                   "_execution_device": torch.device("cpu")})()
    prompt = "  a fox &amp;amp;  a   lantern\n"
    with torch.inference_mode():  # SDPA picks another CPU kernel when autograd is on (~1e-6 apart)
        expected, _ = HeliosPipeline._get_t5_prompt_embeds(fake_pipeline, prompt, max_sequence_length=512)
    ours = encoder.encode(prompt)
    assert torch.equal(ours, expected)
    assert int((ours.abs().sum(-1) > 0).sum()) == len(encoder.tokenizer("a fox & a lantern").input_ids)  # cleaned


def test_prompt_cache_and_truncation_warning(caplog):
    encoder = tiny_text_encoder(cache_size=2)
    first = encoder.encode("one")
    assert encoder.encode("  one ") is not first and torch.equal(encoder.encode("one"), first)
    encoder.encode("two")
    encoder.encode("three")  # evicts "one"
    assert list(encoder._cache) == ["two", "three"]
    with caplog.at_level(logging.WARNING):
        long = encoder.encode("x" * 600)
    assert "truncated to 512" in caplog.text
    assert long.shape == (1, 512, encoder.encoder.config.d_model) and long[0, -1].abs().sum() > 0


def test_byte_tokenizer_distinguishes_prompts():
    tokenizer = byte_level_tokenizer()
    a, b = tokenizer("a fox").input_ids, tokenizer("a cat").input_ids
    assert a != b and a[-1] == b[-1] == tokenizer.eos_token_id


def test_preview_decoder_geometry_and_fit():
    class LinearVAE:  # a VAE that is exactly linear: the fit must recover it
        weight, bias = torch.randn(3, 16), torch.randn(3)
        vae = type("V", (), {"config": type("C", (), {"z_dim": 16})()})()

        def decode(self, latents):
            rgb = torch.einsum("oc,bcthw->bothw", self.weight, latents) + self.bias.view(1, 3, 1, 1, 1)
            return rgb.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)

    fake = LinearVAE()
    fitted = PreviewDecoder.fit(fake)
    assert torch.allclose(fitted.weight, fake.weight, atol=1e-4) and torch.allclose(fitted.bias, fake.bias, atol=1e-4)
    pixels = fitted.decode(torch.randn(1, 16, 9, 4, 5))
    assert pixels.shape == (1, 3, 33, 32, 40) and pixels.abs().max() <= 1


@pytest.mark.parametrize("num_frames,chunks,frames", [(1, 1, 33), (33, 1, 33), (99, 3, 97), (132, 4, 129), (240, 8, 261), (1449, 44, 1449)])
def test_chunk_counts_and_trim(num_frames, chunks, frames):
    spec = RequestSpec("p", "", num_frames, 64, 64, 0, 1.0, (2,))
    assert spec.num_chunks == chunks and spec.output_frames == frames


def test_sampling_params_validation_names_the_field():
    engine = HeliosEngine()
    for params, field in [
        (VideoSamplingParams(height=100), "height"),
        (VideoSamplingParams(num_frames=0), "num_frames"),
        (VideoSamplingParams(pyramid_num_inference_steps_list=(2, 2)), "pyramid_num_inference_steps_list"),
        (VideoSamplingParams(num_inference_steps=0), "steps"),
        (VideoSamplingParams(guidance_scale=-1.0), "guidance_scale"),
        (VideoSamplingParams(decoder="vae"), "decoder"),
        (VideoSamplingParams(seed=-1), "seed"),
    ]:
        with pytest.raises(ValueError, match=field):
            engine.generate("a prompt", params)
    with pytest.raises(ValueError, match="prompt"):
        engine.generate("   ")
    with pytest.raises(ValueError, match="VAE"):
        engine.generate("a prompt", VideoSamplingParams(image=np.zeros((64, 64, 3), np.uint8)))


def test_engine_streams_chunks_as_they_are_made():
    engine = HeliosEngine()
    params = VideoSamplingParams(num_frames=70, height=64, width=128, seed=3)
    progress, chunks = [], []
    (video,) = engine.generate("a lantern", params, on_chunk=chunks.append, on_progress=lambda r, d, t: progress.append((d, t)))
    assert [c.chunk_index for c in chunks] == [0, 1, 2] and video.num_chunks == 3
    assert np.array_equal(np.concatenate([c.frames for c in chunks]), video.frames)
    assert video.frames.shape == (97, 64, 128, 3) and video.frames.dtype == np.uint8
    # encode + chunk 0 (begin, amplified 4+4+4 steps, 2 transitions, decode) + 2 x (begin, 2+2+2, 2, decode)
    done = [d for d, _ in progress]
    assert done == sorted(done) and progress[-1] == (37, 37)
    streamed = list(engine.stream("a lantern", params))
    assert np.array_equal(np.concatenate([c.frames for c in streamed]), video.frames)  # same seed, same video
