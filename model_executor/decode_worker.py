"""Chunk decodes behind the denoising: the VAE of chunk k runs while chunk k+1 is denoised.

Chunk k+1 needs only chunk k's latents (the history is updated before the decode), so the
decode (VAE, uint8 conversion, device-to-host copy, resume snapshot) need not hold up the next
forward. A ``DecodeWorker`` runs decodes on one background thread, in submission order; on
CUDA that thread works on its own stream, ordered after the step that produced the latents by
an event, with the tensors it reads marked as used on that stream (``record_stream``) so the
allocator does not hand their memory to the next chunk too early. ``inline`` runs each decode
at once (the serial path, and the reference the overlapped one equals bitwise).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch


class DecodeWorker:
    def __init__(self, device: torch.device, background: bool):
        self.device = device
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="helios-decode") if background else None
        self._stream = torch.cuda.Stream(device) if background and device.type == "cuda" else None
        self._pending: list[tuple[str, Future]] = []  # submission order

    @property
    def background(self) -> bool:
        return self._pool is not None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def submit(self, request_id: str, decode: Callable[[], object], tensors: tuple[torch.Tensor, ...] = ()) -> None:
        """Queue ``decode()`` for ``request_id``; ``tensors`` are the device tensors it reads."""
        future: Future = Future()
        if self._pool is None:
            _run(future, decode)
        else:
            ready = self._mark_ready(tensors)
            self._pool.submit(self._background, future, decode, ready)
        self._pending.append((request_id, future))

    def _mark_ready(self, tensors):
        if self._stream is None:
            return None
        ready = torch.cuda.Event()
        ready.record()  # after the work that produced the tensors, on the step's stream
        for tensor in tensors:
            tensor.record_stream(self._stream)
        return ready

    def _background(self, future: Future, decode, ready) -> None:
        on_stream = contextlib.nullcontext() if self._stream is None else torch.cuda.stream(self._stream)
        with on_stream, torch.inference_mode():
            if ready is not None:
                self._stream.wait_event(ready)
            _run(future, decode)

    def collect(self, wait: bool) -> list[tuple[str, object]]:
        """(request id, result or exception) of the decodes done, in submission order and
        stopping at the first still running (so every request's chunks come in order). With
        ``wait``, blocks until at least one is done when any is pending."""
        if wait and self._pending and not self._pending[0][1].done():
            self._pending[0][1].exception()  # waits for it; its exception is reported below
        done = []
        while self._pending and self._pending[0][1].done():
            request_id, future = self._pending.pop(0)
            error = future.exception()
            done.append((request_id, error if error is not None else future.result()))
        return done

    def drop(self, request_id: str) -> None:
        """Forget the request's decodes (cancelled or failed): results that come later are ignored."""
        for rid, future in self._pending:
            if rid == request_id:
                future.cancel()
        self._pending = [(rid, future) for rid, future in self._pending if rid != request_id]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _run(future: Future, decode) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(decode())
    except Exception as exc:  # noqa: BLE001 - reported with the request's id, failing only it
        future.set_exception(exc)
