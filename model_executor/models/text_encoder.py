"""UMT5 prompt encoding with the reference's cleaning and padding (spec §5.1), plus an LRU cache."""

from __future__ import annotations

import functools
import html
import logging
import re
import threading
from collections import OrderedDict

import torch

from ..device import to_device

logger = logging.getLogger(__name__)

MAX_SEQUENCE_LENGTH = 512


def clean_prompt(text: str) -> str:
    """Fix mojibake, unescape HTML twice, collapse whitespace."""
    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return re.sub(r"\s+", " ", text).strip()


class TextEncoder:
    """Prompt -> [1, max_length, dim] embeddings, valid positions first, zero padding after.

    Padding positions are zeros, not masked: the transformer's text projection turns them into
    a constant vector every query may attend to, as the checkpoints were trained.
    """

    def __init__(self, tokenizer, encoder, max_length: int = MAX_SEQUENCE_LENGTH, cache_size: int = 64):
        self.tokenizer = tokenizer
        self.encoder = encoder.eval()
        self.max_length = max_length
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        # A server encodes a new prompt on a worker thread while the engine thread may encode too.
        self._cache_lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, root, device, dtype: torch.dtype, **kwargs) -> TextEncoder:
        from transformers import AutoTokenizer, UMT5EncoderModel

        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        encoder = UMT5EncoderModel.from_pretrained(root / "text_encoder", torch_dtype=dtype).to(device)
        return cls(tokenizer, encoder, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def encode(self, prompt: str) -> torch.Tensor:
        key = clean_prompt(prompt)
        with self._cache_lock:
            valid = self._cache.get(key)
            if valid is not None:
                self._cache.move_to_end(key)
        if valid is None:
            valid = self._encode_uncached(key)
            with self._cache_lock:
                self._cache[key] = valid
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        padded = valid.new_zeros(1, self.max_length, valid.shape[-1])
        padded[0, : valid.shape[0]] = valid
        return padded

    @torch.inference_mode()
    def _encode_uncached(self, prompt: str) -> torch.Tensor:
        num_tokens = len(self.tokenizer(prompt, add_special_tokens=True).input_ids)
        if num_tokens > self.max_length:
            logger.warning("prompt has %d tokens; truncated to %d", num_tokens, self.max_length)
        tokens = self.tokenizer(
            [prompt],
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        length = int(tokens.attention_mask.gt(0).sum())  # counted on the host: no device read
        mask = to_device(tokens.attention_mask, self.device)
        if _takes_prepared_masks():
            # Given a 2-D mask, these versions ask the device whether any token is padding (a host
            # read); the same mask in 4-D (query i may attend to key j when j is a token) is used as is.
            mask = mask.bool()[:, None, None, :].expand(-1, 1, mask.shape[1], -1)
        hidden = self.encoder(to_device(tokens.input_ids, self.device), mask).last_hidden_state
        return hidden[0, :length].to(self.dtype).clone()


@functools.cache
def _takes_prepared_masks() -> bool:
    """Whether transformers' UMT5 encoder builds its mask with masking_utils (5.19 and later, as
    far as tested here: 5.19, 5.23), which uses a prepared 4-D mask as is. Earlier versions (5.14)
    add the 2-D mask directly, reading nothing from the device, and would break on a 4-D one."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) >= Version("5.19")
