"""Checkpoints that do not fit the model fail with an error that names the problem."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from helios_serve.model_executor import CheckpointError, HeliosTransformer

INDEX = "diffusion_pytorch_model.safetensors.index.json"


def _rewrite_shard_holding(folder, name, edit):
    """Apply ``edit(tensors)`` to the shard that stores tensor ``name``."""
    index = json.loads((folder / INDEX).read_text())
    shard = folder / index["weight_map"][name]
    tensors = load_file(shard)
    edit(tensors)
    save_file(tensors, shard, metadata={"format": "pt"})
    return index


def test_loads_single_file_and_sharded(save_reference):
    _, sharded = save_reference(seed=0)
    _, single = save_reference(seed=0, max_shard_size="10GB", cross_attn_norm=True)
    assert (sharded / INDEX).exists() and not (single / INDEX).exists()
    a = HeliosTransformer.from_pretrained(sharded, dtype=torch.float32)
    b = HeliosTransformer.from_pretrained(single, dtype=torch.float32)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name


def test_checkpoint_root_with_transformer_subfolder(save_reference, tmp_path):
    _, folder = save_reference(seed=0)
    root = tmp_path / "checkpoint"
    root.mkdir()
    folder.rename(root / "transformer")
    assert HeliosTransformer.from_pretrained(root, dtype=torch.float32).config.num_layers == 2


def test_missing_tensor_is_named(save_reference):
    _, folder = save_reference()
    name = "blocks.1.attn1.to_k.weight"
    index = _rewrite_shard_holding(folder, name, lambda t: t.pop(name))
    del index["weight_map"][name]
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"missing tensors: blocks\.1\.attn1\.to_k\.weight"):
        HeliosTransformer.from_pretrained(folder)


def test_unexpected_tensor_is_named(save_reference):
    _, folder = save_reference()
    name = "blocks.0.attn1.to_q.weight"
    index = _rewrite_shard_holding(folder, name, lambda t: t.update({"gan_heads.0.weight": torch.zeros(3)}))
    index["weight_map"]["gan_heads.0.weight"] = index["weight_map"][name]
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"unexpected tensors: gan_heads\.0\.weight"):
        HeliosTransformer.from_pretrained(folder)


def test_wrong_shape_is_named(save_reference):
    _, folder = save_reference()
    name = "blocks.0.ffn.net.2.bias"
    _rewrite_shard_holding(folder, name, lambda t: t.update({name: torch.zeros(5)}))
    with pytest.raises(CheckpointError, match=r"blocks\.0\.ffn\.net\.2\.bias .* shape \(5,\), expected \(32,\)"):
        HeliosTransformer.from_pretrained(folder)


@pytest.mark.parametrize(
    "corruption,message",
    [
        (lambda text: text[: len(text) // 2], "corrupt checkpoint index"),
        (lambda text: json.dumps({"metadata": {}}), "corrupt checkpoint index"),
        (lambda text: text.replace("00001-of", "00099-of", 1), "does not exist"),
    ],
    ids=["truncated-json", "no-weight-map", "unknown-shard"],
)
def test_corrupt_index(save_reference, corruption, message):
    _, folder = save_reference()
    (folder / INDEX).write_text(corruption((folder / INDEX).read_text()))
    with pytest.raises(CheckpointError, match=message):
        HeliosTransformer.from_pretrained(folder)


def test_index_pointing_at_the_wrong_shard(save_reference):
    _, folder = save_reference()
    index = json.loads((folder / INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[1]
    (folder / INDEX).write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"missing from {shards[1]}: {name}"):
        HeliosTransformer.from_pretrained(folder)


def test_missing_config_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        HeliosTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"num_layers": 1}))
    with pytest.raises(CheckpointError, match="no diffusion_pytorch_model"):
        HeliosTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        HeliosTransformer.from_pretrained(tmp_path)
