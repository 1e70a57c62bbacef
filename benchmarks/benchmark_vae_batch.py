"""Is one batched VAE call for several requests' chunks faster than one call per chunk?

    python benchmarks/benchmark_vae_batch.py                       # CPU, the Wan VAE at 128x128
    python benchmarks/benchmark_vae_batch.py --device cuda --size 384x640

The Wan-2.1 VAE (diffusers AutoencoderKLWan, random weights: speed does not depend on their
values) decodes ``--batch`` different chunks of 33 frames as one batch and one by one; it prints
milliseconds per chunk for each and the largest uint8 difference between the two (the batched
convolutions may pick other kernels). ``benchmarks/gpu_check.py`` runs the same measurement at
384x640 on the GPU. The engine decodes one chunk per call: a batched decode would pay off only
where this shows it faster.
"""

from __future__ import annotations

import argparse
import statistics
import time


def batched_decode_figures(vae, latents, time_ms) -> dict:
    """Per-chunk milliseconds of decoding ``latents`` [B, 16, T, h, w] with our WanVAE ``vae`` in
    one call and one chunk per call (``time_ms(fn)``: a median of synchronised timings), and the
    largest uint8 difference between the frames the two give."""
    import torch

    batch = latents.shape[0]
    batched_ms = time_ms(lambda: vae.decode(latents)) / batch
    single_ms = time_ms(lambda: [vae.decode(latents[i:i + 1]) for i in range(batch)]) / batch
    with torch.inference_mode():
        together = [frames for frames in _uint8_frames(vae.decode(latents))]
        apart = [_uint8_frames(vae.decode(latents[i:i + 1]))[0] for i in range(batch)]
    difference = max(int((a.int() - b.int()).abs().max()) for a, b in zip(together, apart))
    return {"batch": batch, "batched_ms_per_chunk": batched_ms, "single_ms_per_chunk": single_ms,
            "batched_speedup": single_ms / batched_ms, "max_uint8_difference": difference}


def _uint8_frames(pixels):
    from helios_serve.model_executor.models.vae import to_uint8_frames

    return [to_uint8_frames(pixels[i:i + 1]) for i in range(pixels.shape[0])]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--size", default="128x128", help="HEIGHTxWIDTH of the frames (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=2, help="chunks decoded together (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median taken (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch
    from diffusers import AutoencoderKLWan
    from diffusers.utils import logging as diffusers_logging

    from helios_serve.model_executor.models.vae import WanVAE

    diffusers_logging.set_verbosity_error()
    height, width = (int(side) for side in args.size.lower().split("x"))
    device = torch.device(args.device)
    torch.manual_seed(0)
    vae = WanVAE(AutoencoderKLWan().to(device).eval())
    latents = torch.randn(args.batch, 16, 9, height // 8, width // 8, generator=torch.Generator().manual_seed(0))

    def time_ms(fn) -> float:
        with torch.inference_mode():
            fn()  # warm-up
            times = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)

    figures = batched_decode_figures(vae, latents.to(device), time_ms)
    print(f"Wan VAE decode, {args.batch} chunks of 33 frames at {height}x{width} on {device} "
          f"({torch.get_num_threads()} threads):")
    print(f"  one call per chunk   {figures['single_ms_per_chunk']:9.1f} ms per chunk")
    print(f"  one batched call     {figures['batched_ms_per_chunk']:9.1f} ms per chunk "
          f"(x{figures['batched_speedup']:.2f})")
    print(f"  largest uint8 difference between them: {figures['max_uint8_difference']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
