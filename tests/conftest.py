"""Shared fixtures: tiny diffusers reference transformers saved in diffusers format."""

from __future__ import annotations

import os

# Triton kernels run in Triton's interpreter on CPU machines; it must be chosen before triton
# is imported. Set HELIOS_TEST_CUDA=1 to test the compiled kernels on a GPU instead.
if not os.environ.get("HELIOS_TEST_CUDA"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests make their own checkpoints, so nothing may reach a model hub: a released model's name would
# otherwise start an 80 GB download. Set before huggingface_hub reads it at import (tests of the
# download itself run in processes of their own, against a local fake hub).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

# -- engine integration tests ----------------------------------------------------------------
# tests/engines/test_<engine>.py run inside that engine's own virtualenv (see .ci/engine-tests):
# vLLM-Omni and SGLang pin torch and transformers versions that cannot share one environment.


def pytest_addoption(parser):
    parser.addoption("--engine", default=None, choices=("vllm_omni", "sglang"),
                     help="run the integration tests of this engine (in an environment that has it installed)")


def pytest_ignore_collect(collection_path, config):
    if collection_path.parent.name == "engines" and collection_path.name.startswith("test_"):
        return collection_path.stem.removeprefix("test_") != config.getoption("--engine")
    return None


# A tiny config of the released architecture: every code path, a few thousand parameters.
TINY_REFERENCE_CONFIG = dict(
    num_attention_heads=2,
    attention_head_dim=16,
    rope_dim=(8, 4, 4),
    text_dim=24,
    freq_dim=32,
    ffn_dim=48,
    num_layers=2,
)


def build_reference(seed: int = 0, **overrides):
    """A diffusers HeliosTransformer3DModel with seeded random weights, in eval mode."""
    from diffusers import HeliosTransformer3DModel

    torch.manual_seed(seed)
    model = HeliosTransformer3DModel(**{**TINY_REFERENCE_CONFIG, **overrides}).eval()
    with torch.no_grad():
        # Default init leaves biases and norm gains trivial; randomise everything so a wrong
        # mapping of any tensor shows up in the outputs.
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.copy_(torch.randn_like(param) * 0.1 + (1.0 if "norm" in name and "weight" in name else 0.0))
    return model


@pytest.fixture
def save_reference(tmp_path):
    """Save a reference model as a sharded diffusers folder; returns (model, folder)."""

    def save(seed: int = 0, max_shard_size: str = "20KB", **overrides):
        model = build_reference(seed, **overrides)
        folder = tmp_path / f"transformer-{seed}-{len(overrides)}"
        model.save_pretrained(folder, max_shard_size=max_shard_size, safe_serialization=True)
        return model, folder

    return save


# -- whole tiny Helios pipelines in diffusers format ------------------------------------------

PIPELINE_TEXT_DIM = TINY_REFERENCE_CONFIG["text_dim"]


def build_reference_pipeline(variant: str, seed: int = 0):
    """A tiny diffusers Helios pipeline: Base, Mid or Distilled style, all components random."""
    from diffusers import AutoencoderKLWan, HeliosDMDScheduler, HeliosPipeline, HeliosPyramidPipeline, HeliosScheduler
    from transformers import UMT5Config, UMT5EncoderModel

    from helios_serve.model_executor.models.tiny import byte_level_tokenizer

    tokenizer = byte_level_tokenizer()
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(
        UMT5Config(vocab_size=len(tokenizer), d_model=PIPELINE_TEXT_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=16)
    ).eval()
    vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True]).eval()
    transformer = build_reference(seed)
    components = dict(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer)
    # gamma=0.3: diffusers' fp32 Cholesky of the gamma=1/3 block covariance fails on CPU torch 2.13.
    if variant == "base":
        scheduler = HeliosScheduler(stages=1, stage_range=[0, 1], use_dynamic_shifting=True)
        return HeliosPipeline(scheduler=scheduler, **components)
    if variant == "mid":
        scheduler = HeliosScheduler(stages=3, gamma=0.3, use_dynamic_shifting=True)
        return HeliosPyramidPipeline(scheduler=scheduler, is_cfg_zero_star=True, **components)
    scheduler = HeliosDMDScheduler(stages=3, gamma=0.3, use_dynamic_shifting=True, time_shift_type="linear")
    return HeliosPyramidPipeline(scheduler=scheduler, is_distilled=True, **components)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """variant -> (reference pipeline, saved checkpoint directory); built once per session."""
    cache = {}

    def get(variant: str):
        if variant not in cache:
            pipeline = build_reference_pipeline(variant)
            folder = tmp_path_factory.mktemp(f"helios-{variant}")
            pipeline.save_pretrained(folder)
            cache[variant] = (pipeline, folder)
        return cache[variant]

    return get


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """One helios-tiny server for the API tests (small upload limit to test 413)."""
    from live_server import start_server

    live = start_server(tmp_path_factory.mktemp("server") / "data", "--max-upload-mb", "1")
    yield live
    live.stop()


@pytest.fixture
def openai_client(server):
    import warnings

    from openai import OpenAI

    warnings.filterwarnings("ignore", message=".*Sora API.*", category=DeprecationWarning)
    return OpenAI(base_url=server.api, api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server for the session (stopped by pid at the end)."""
    from postgres_server import start_postgres

    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def job_store_location(request, tmp_path):
    """Where a test's job store lives: a SQLite file, or a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite3"
    import uuid

    return request.getfixturevalue("postgres").create_database(f"jobs_{uuid.uuid4().hex[:12]}")
