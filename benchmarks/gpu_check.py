"""One command that checks and measures helios-serve on a GPU: no network, no checkpoint.

    python benchmarks/gpu_check.py --output gpu_check.json          # on an H100/H200, ~5 minutes
    python benchmarks/gpu_check.py --dry-run                        # every section on CPU, helios-tiny

Random weights at the released 14B configuration (``helios-distilled-random``): the speed of
GEMMs, attention, kernels and the VAE does not depend on the weights' values. Sections:

  environment  torch / CUDA / cuDNN / triton versions, the device, the SDPA kernel that runs for
               the self-attention of each pyramid stage
  kernels      every Triton kernel compiled for the device against its PyTorch reference (the
               interpreter tests' tolerances), GB/s at the 14B geometry against a measured copy
  dit          one DiT forward per pyramid stage (2,940 / 4,560 / 11,040 tokens, bf16): ms,
               TFLOP/s by the cost model, MFU against a measured bf16 GEMM; per SDPA backend
  vae          Wan VAE decode of one chunk (diffusers AutoencoderKLWan, random weights), fp32 and bf16;
               two requests' chunks decoded in one call against a call each
  engine       HeliosEngine, Distilled [1,1,1] at 384x640, three chunks: s/chunk, frames/s, GPU time
               by unit of work, host-device synchronisations per chunk
  tiny         helios-tiny through the whole engine in bf16 on the device against fp32 on the CPU,
               Distilled with the amplified first chunk (the path that could not run on CUDA)
  parallel     frames/s of one stream with 1, 2 and 4 sequence-parallel GPUs (as many as there
               are), and with the VAE and text encoder on a second GPU; skipped on one GPU

``--dry-run`` runs each section on the CPU with helios-tiny sizes (Triton in its interpreter),
so CI checks the script itself; its figures describe a CPU and measure nothing about GPUs.
It prints a table and writes every figure to one JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

SECTIONS = ("environment", "kernels", "dit", "vae", "engine", "tiny", "parallel")
TINY_TOLERANCE = {"mean_abs_max": 2.0, "psnr_min_db": 35.0}
"""bf16 on the device vs fp32 on the CPU, uint8 frames of a random tiny model over two chunks
(bf16 vs fp32 on one CPU gives a mean of 0.54 levels and 48 dB)."""
KERNEL_TOLERANCE = 1e-2
"""bf16 outputs: max |fused - reference| / max |reference|, as tests/test_kernels.py allows for bf16."""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="run every section on the CPU with helios-tiny sizes")
    parser.add_argument("--output", default="gpu_check.json", help="the JSON file to write (default %(default)s)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repetitions per measurement, their median is reported (default 5; 1 in a dry run)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {SECTIONS}")
    if args.dry_run:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

    import torch

    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device: use --dry-run to exercise the script on a CPU")
    check = Check(dry_run=args.dry_run, repeats=max(1, args.repeats or (1 if args.dry_run else 5)))
    report = {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "sections": {}}
    failed = []
    for name in sections:
        started = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = getattr(check, name)()
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        report["sections"][name] = result
        if "error" in result or result.get("ok") is False:
            failed.append(name)
        Path(args.output).write_text(json.dumps(report, indent=2, default=str))  # kept even if a later one dies
    report["failed_sections"] = failed
    Path(args.output).write_text(json.dumps(report, indent=2, default=str))
    print(render(report))
    print(f"[gpu_check] wrote {args.output}")
    return 1 if failed else 0


class Check:
    def __init__(self, dry_run: bool, repeats: int):
        import torch

        self.torch = torch
        self.dry_run = dry_run
        self.repeats = repeats
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.dtype = torch.bfloat16
        self.model = "helios-tiny" if dry_run else "helios-distilled-random"
        self._engine = None
        self._gemm_tflops = None

    # -- helpers ---------------------------------------------------------------------------
    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def time_ms(self, fn, repeats: int | None = None, warmup: int = 1) -> float:
        """Median wall milliseconds of ``fn`` (device-synchronised), after ``warmup`` calls (none in a dry run)."""
        for _ in range(0 if self.dry_run else warmup):
            fn()
        self.sync()
        times = []
        for _ in range(repeats or self.repeats):
            started = time.perf_counter()
            fn()
            self.sync()
            times.append((time.perf_counter() - started) * 1e3)
        return statistics.median(times)

    def helios(self):
        """The HeliosEngine of the checked model (random 14B on a GPU, helios-tiny in a dry run), built once."""
        if self._engine is None:
            from helios_serve import HeliosEngine

            self._engine = HeliosEngine(model=self.model, device=str(self.device), dtype="bfloat16")
        return self._engine

    def gemm_tflops(self) -> float:
        """Measured dense bf16 GEMM rate (8192^3 on a GPU, 1024^3 on a CPU dry run)."""
        if self._gemm_tflops is None:
            n = 1024 if self.dry_run else 8192
            a, b = (self.torch.randn(n, n, device=self.device, dtype=self.dtype) for _ in range(2))
            ms = self.time_ms(lambda: a @ b, warmup=2)
            self._gemm_tflops = 2 * n**3 / ms / 1e9
        return self._gemm_tflops

    def stage_geometry(self):
        """[(noisy latent h, w)] of the three pyramid stages at the model's default size, and tokens."""
        from helios_serve.model_executor.cost_model import forward_tokens

        runner = self.helios().core.executor.runner
        variant = runner.variant
        tokens = forward_tokens(runner.transformer.config, variant.default_height, variant.default_width,
                                variant.sampler.stages)
        return variant, [t["total"] for t in tokens]

    # -- sections --------------------------------------------------------------------------
    def environment(self) -> dict:
        torch = self.torch
        info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                "device": torch.cuda.get_device_name() if self.device.type == "cuda" else platform.processor() or "cpu"}
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            info["triton"] = None
        _, tokens = self.stage_geometry()
        config = self.helios().core.executor.runner.transformer.config
        info["sdpa_kernels"] = {str(t): self._sdpa_kernel(t, config.num_attention_heads, config.attention_head_dim)
                                for t in tokens}
        return info

    def _sdpa_kernel(self, tokens: int, heads: int, head_dim: int) -> str:
        """The kernel the default SDPA dispatch runs for the model's self-attention layout."""
        from torch.profiler import ProfilerActivity, profile

        from helios_serve.model_executor.layers.attention_backends import attention_function

        scaled_dot_product = attention_function("sdpa")

        torch = self.torch
        width = heads * head_dim
        qkv = torch.randn(1, tokens, 3 * width, device=self.device, dtype=self.dtype)
        q = qkv[..., :width].reshape(1, tokens, heads, head_dim).contiguous()  # as the q/k kernel returns them
        k = qkv[..., width : 2 * width].reshape(1, tokens, heads, head_dim).contiguous()
        v = qkv[..., 2 * width :].unflatten(-1, (heads, head_dim))  # a strided slice of the fused qkv
        scaled_dot_product(q, k, v)
        self.sync()
        activities = [ProfilerActivity.CUDA] if self.device.type == "cuda" else [ProfilerActivity.CPU]
        with profile(activities=activities) as prof:
            scaled_dot_product(q, k, v)
            self.sync()
        events = [e for e in prof.key_averages() if e.device_type.name == activities[0].name]
        if self.device.type == "cpu":
            names = [e.key for e in events if e.key.startswith("aten::_scaled_dot_product")]
            return names[-1] if names else "math (decomposed)"
        top = max(events, key=lambda e: e.device_time_total, default=None)
        return top.key[:160] if top else "unknown"

    def kernels(self) -> dict:
        torch = self.torch
        from helios_serve import kernels as k

        rows, width, heads = (16, 5120, 40) if self.dry_run else (11_040, 5120, 40)
        dtype = self.dtype
        gen = torch.Generator(self.device).manual_seed(0)

        def randn(*shape, dt=dtype):
            return torch.randn(*shape, generator=gen, device=self.device, dtype=torch.float32).to(dt)

        qkv = randn(rows, 3 * width)
        q, kk = qkv[:, :width], qkv[:, width : 2 * width]
        table = randn(3, width, dt=torch.float32)
        index = torch.arange(rows, device=self.device, dtype=torch.int32) % 3
        weight, bias = randn(width, dt=torch.float32), randn(width, dt=torch.float32)
        cos, sin = randn(rows, width // heads // 2, dt=torch.float32), randn(rows, width // heads // 2, dt=torch.float32)
        act_bytes = rows * width * qkv.element_size()
        cases = {
            "norm_modulate": (lambda: k.norm_modulate(q, table, table, index, 1e-6),
                              lambda: k.norm_modulate_ref(q, table, table, index, 1e-6), 2 * act_bytes),
            "layer_norm": (lambda: k.layer_norm(kk, weight, bias, 1e-6),
                           lambda: k.layer_norm_ref(kk, weight, bias, 1e-6), 2 * act_bytes),
            "gated_residual": (lambda: k.gated_residual(q, kk, table, index),
                               lambda: k.gated_residual_ref(q, kk, table, index), 3 * act_bytes),
            "qk_norm_rope": (lambda: k.qk_norm_rope(q, kk, weight, weight, cos, sin, heads, 1e-6),
                             lambda: k.qk_norm_rope_ref(q, kk, weight, weight, cos, sin, heads, 1e-6), 4 * act_bytes),
        }
        copy_gbs = self._copy_gbs()
        results, ok = {}, True
        for name, (fused, reference, moved) in cases.items():
            out, ref = fused(), reference()
            outs, refs = (out, ref) if isinstance(out, tuple) else ((out,), (ref,))
            error = max(((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-6)).item()
                        for o, r in zip(outs, refs))
            passed = error <= KERNEL_TOLERANCE
            ok &= passed
            ms = self.time_ms(fused, warmup=2)
            gbs = moved / ms / 1e6
            results[name] = {"max_rel_error": error, "ok": passed, "ms": ms, "gb_per_s": gbs,
                             "fraction_of_copy": gbs / copy_gbs}
        return {"ok": ok, "rows": rows, "width": width, "copy_gb_per_s": copy_gbs, "kernels": results,
                "interpreter": os.environ.get("TRITON_INTERPRET") == "1"}

    def _copy_gbs(self) -> float:
        """Device-to-device copy bandwidth, bytes read plus bytes written."""
        numel = (1 << 20) if self.dry_run else (1 << 30)
        src = self.torch.empty(numel, device=self.device, dtype=self.torch.uint8).random_()
        dst = self.torch.empty_like(src)
        ms = self.time_ms(lambda: dst.copy_(src), warmup=2)
        return 2 * numel / ms / 1e6

    def dit(self) -> dict:
        from helios_serve.model_executor.layers.attention_backends import Capabilities, choose_backend
        from helios_serve.sampling_params import VideoSamplingParams

        torch = self.torch
        engine = self.helios()
        runner = engine.core.executor.runner
        variant, tokens = self.stage_geometry()
        spec = engine.resolve("a fox", VideoSamplingParams(num_frames=33, seed=0,
                                                           pyramid_num_inference_steps_list=[1] * variant.sampler.stages,
                                                           is_amplify_first_chunk=False))
        state = runner.create_state(spec)
        runner.procedure.begin_chunk(state)
        gemm = self.gemm_tflops()
        stages = []
        transformer, chosen = runner.transformer, runner.attention_backend  # --attention-backend auto's pick
        capabilities = Capabilities.probe(self.device)
        timing = engine.core.executor.forward_timing()  # the scheduler's and the simulator's cost model
        with torch.inference_mode():
            for stage, stage_tokens in enumerate(tokens):
                flops = runner.forward_flops(state)
                entry = {"stage": stage, "tokens": stage_tokens, "latents": list(state.latents.shape[-2:]),
                         "tflop": flops / 1e12, "backends": {}}
                transformer.use_attention("sdpa")
                reference = runner.forward([state])[0][0]
                for name in ("sdpa", "flash", "cudnn", "fa3"):  # each attention backend, the same forward
                    try:
                        transformer.use_attention(choose_backend(name, capabilities, self.dtype))
                        ms = self.time_ms(lambda: runner.forward([state]))
                        out = runner.forward([state])[0][0]
                        error = ((out.float() - reference.float()).norm() / reference.float().norm()).item()
                        entry["backends"][name] = {"ms": ms, "tflop_per_s": flops / ms / 1e9, "rel_error": error}
                    except (RuntimeError, ValueError) as exc:
                        entry["backends"][name] = {"error": str(exc).splitlines()[0][:200]}
                transformer.use_attention(chosen)
                used = entry["backends"][chosen]
                entry.update(ms=used["ms"], tflop_per_s=used["tflop_per_s"], mfu=used["tflop_per_s"] / gemm,
                             predicted_ms=1e3 * timing.seconds(flops) if timing else None)
                stages.append(entry)
                runner.procedure.apply_model_output(state, runner.forward([state])[0])
                if stage + 1 < len(tokens):
                    runner.procedure.next_stage(state)
        return {"gemm_tflop_per_s": gemm, "attention_backend": chosen, "stages": stages,
                "chunk_ms": sum(s["ms"] for s in stages), "chunk_tflop": sum(s["tflop"] for s in stages)}

    def vae(self) -> dict:
        try:
            from diffusers import AutoencoderKLWan
        except ImportError:
            return {"skipped": "diffusers is not importable"}
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()  # not its note on fp32 modules: this VAE has none
        torch = self.torch
        if self.dry_run:  # a tiny VAE at a small size: checks the section, measures nothing
            config, latent = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1), (1, 16, 3, 8, 8)
        else:
            config, latent = {}, (1, 16, 9, 48, 80)  # the Wan-2.1 VAE; one chunk at 384x640

        from benchmark_vae_batch import batched_decode_figures

        from helios_serve.model_executor.models.vae import WanVAE

        z = torch.randn(latent, generator=torch.Generator().manual_seed(0)).to(self.device)

        def decode(dtype) -> tuple[float, object]:
            """(ms, uint8 frames) of our WanVAE decoding in ``dtype`` (--vae-dtype)."""
            torch.manual_seed(0)
            vae = WanVAE(AutoencoderKLWan(**config).to(self.device).eval(), decode_dtype=dtype)
            ms = self.time_ms(lambda: vae.decode(z), repeats=min(self.repeats, 3))
            return ms, vae.decode_frames(z).float()

        (fp32_ms, fp32), (bf16_ms, bf16) = decode(torch.float32), decode(torch.bfloat16)
        mse = float(((fp32 - bf16) ** 2).mean())
        psnr = float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)
        # Two requests' chunks in one call against one call each: whether batching decodes pays.
        two_chunks = torch.randn((2, *latent[1:]), generator=torch.Generator().manual_seed(1)).to(self.device)
        batched = batched_decode_figures(WanVAE(AutoencoderKLWan(**config).to(self.device).eval()), two_chunks,
                                         lambda fn: self.time_ms(fn, repeats=min(self.repeats, 3)))
        return {"latents": list(latent), "fp32": {"ms": fp32_ms}, "bf16": {"ms": bf16_ms},
                "bf16_speedup": fp32_ms / bf16_ms, "bf16_psnr_db": psnr, "batched_fp32": batched}

    def engine(self) -> dict:
        from helios_serve import VideoSamplingParams

        torch = self.torch
        engine = self.helios()
        stages = engine.variant.sampler.stages
        steps = [1] * stages
        # Compilation, autotuning and allocator growth stay out of the numbers (as the server's warm-up).
        engine.generate(["warm-up"], VideoSamplingParams(num_frames=33, seed=1, pyramid_num_inference_steps_list=steps))
        params = VideoSamplingParams(num_frames=99, seed=0, pyramid_num_inference_steps_list=steps)
        timer = UnitTimer(engine.core.executor, self.device)
        engine.core.executor = timer
        cuda = self.device.type == "cuda"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if cuda:
                    torch.cuda.set_sync_debug_mode("warn")
                seconds, frames = self._chunk_times(engine, params)
                if cuda:
                    torch.cuda.set_sync_debug_mode(0)
        finally:
            engine.core.executor = timer.inner
        sync_warnings = sum("synchroniz" in str(w.message) for w in caught)
        steady = seconds[1:]  # chunk 0 also encodes the prompt and runs the amplified (doubled) schedule
        fps = sum(frames[1:]) / sum(steady)
        serial_fps = self._serial_decode_fps(params)
        return {"model": self.model, "steps": steps, "size": [engine.variant.default_height, engine.variant.default_width],
                "chunk_seconds": seconds, "frames": frames, "steady_seconds_per_chunk": statistics.mean(steady),
                "steady_fps": fps, "first_chunk_seconds": seconds[0], "units": timer.summary(),
                "serial_decode_fps": serial_fps, "decode_overlap_speedup": fps / serial_fps,
                "cuda_sync_warnings_per_chunk": sync_warnings / len(seconds) if cuda else None,
                "host_syncs_per_unit": self._host_syncs_per_unit(steps), "paper_fps": 19.53,
                "ok": fps >= 19.53 if cuda else None}

    def parallel(self) -> dict:
        """One stream's steady frames/s per GPU layout: (sequence-parallel ranks, VAE device)."""
        torch = self.torch
        count = 2 if self.dry_run else torch.cuda.device_count()
        layouts = [(n, None) for n in (1, 2, 4) if n <= count]
        if count >= 2:
            layouts.append((1, "cpu" if self.dry_run else "cuda:1"))
        if len(layouts) == 1:
            return {"skipped": f"needs 2 or more GPUs; this machine has {count}", "gpus": count}
        if self._engine is not None:  # its weights would crowd rank 0's GPU
            self._engine.close()
            self._engine = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        results = [self._stream_fps(ranks, vae_device) for ranks, vae_device in layouts]
        return {"gpus": count, "layouts": results}

    def _stream_fps(self, ranks: int, vae_device: str | None) -> dict:
        from helios_serve import HeliosEngine, VideoSamplingParams
        from helios_serve.model_executor.step_io import RunnerConfig

        config = RunnerConfig(model=self.model, device=str(self.device), dtype="bfloat16", vae_device=vae_device)
        engine = HeliosEngine(model_config=config, sequence_parallel_size=ranks)
        try:
            steps = [1] * engine.variant.sampler.stages
            engine.generate(["warm-up"], VideoSamplingParams(num_frames=33, seed=1,
                                                             pyramid_num_inference_steps_list=steps))
            params = VideoSamplingParams(num_frames=99, seed=0, pyramid_num_inference_steps_list=steps)
            seconds, frames = self._chunk_times(engine, params)
        finally:
            engine.close()
        return {"sequence_parallel_size": ranks, "vae_device": vae_device,
                "steady_fps": sum(frames[1:]) / sum(seconds[1:]), "chunk_seconds": seconds}

    @staticmethod
    def _chunk_times(engine, params) -> tuple[list[float], list[int]]:
        """(seconds since the previous chunk, frames) of each chunk of one streamed video."""
        seconds, frames, last = [], [], time.perf_counter()
        for chunk in engine.stream("a fox running through the snow", params):
            now = time.perf_counter()
            seconds.append(now - last)
            frames.append(len(chunk.frames))
            last = now
        return seconds, frames

    def _serial_decode_fps(self, params) -> float:
        """Steady frames/s of the same stream with each chunk decoded before the next begins
        (--max-decodes-in-flight 0): what the decode overlap gains."""
        from helios_serve import HeliosEngine

        torch = self.torch
        serial = HeliosEngine(model=self.model, device=str(self.device), dtype="bfloat16", max_decodes_in_flight=0)
        serial.generate(["warm-up"], params.with_updates(num_frames=33, seed=1))
        seconds, frames = self._chunk_times(serial, params)
        del serial
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return sum(frames[1:]) / sum(seconds[1:])

    def _host_syncs_per_unit(self, steps) -> dict:
        """One chunk under HostSyncCounter: on the device (meta in a dry run, where a GPU's syncs show)."""
        from helios_serve import HeliosEngine, VideoSamplingParams

        engine = self.helios() if self.device.type == "cuda" else HeliosEngine(model=self.model, device="meta",
                                                                               dtype="bfloat16")
        timer = UnitTimer(engine.core.executor, engine.core.executor.runner.device, count_syncs=True)
        engine.core.executor = timer
        try:
            engine.generate(["a fox"], VideoSamplingParams(num_frames=33, seed=2, pyramid_num_inference_steps_list=steps))
        finally:
            engine.core.executor = timer.inner
        return {unit: stats["host_syncs"] for unit, stats in timer.summary().items()}

    def tiny(self) -> dict:
        import numpy as np

        from helios_serve import HeliosEngine, VideoSamplingParams

        params = VideoSamplingParams(num_frames=66, seed=0)  # the recipe: [2,2,2], amplified first chunk
        device = HeliosEngine(model="helios-tiny", device=str(self.device), dtype="bfloat16")
        host = HeliosEngine(model="helios-tiny", device="cpu", dtype="float32")
        ours = device.generate(["a lantern in the rain"], params)[0].frames.astype(np.int16)
        reference = host.generate(["a lantern in the rain"], params)[0].frames.astype(np.int16)
        diff = np.abs(ours - reference)
        mse = float((diff.astype(np.float64) ** 2).mean())
        psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
        ok = diff.mean() <= TINY_TOLERANCE["mean_abs_max"] and psnr >= TINY_TOLERANCE["psnr_min_db"]
        return {"ok": bool(ok), "frames": list(ours.shape), "max_abs": int(diff.max()), "mean_abs": float(diff.mean()),
                "psnr_db": psnr, "tolerance": TINY_TOLERANCE, "steps": list(device.variant.default_steps),
                "amplified_first_chunk": device.variant.default_amplify_first_chunk,
                "kernels": device.core.executor.runner.transformer.ops.name}


class UnitTimer:
    """Wraps the engine's executor: device and host time per unit of work (one request: one unit
    per step), read from CUDA events at the end so timing adds no synchronisation; optionally
    the host syncs of each unit (HostSyncCounter)."""

    UNITS = ("encode", "begin_chunk", "next_stage", "denoise", "decode")

    def __init__(self, inner, device, count_syncs: bool = False):
        self.inner = inner
        self.device = device
        self.count_syncs = count_syncs
        self.records = []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def execute(self, plan):
        import torch

        from helios_serve.model_executor.device import HostSyncCounter

        # A step with no unit waits for a decode running behind the denoising (or frees a request).
        unit = next((u for u in self.UNITS if getattr(plan, u)), "free" if plan.free else "decode_wait")
        events = None
        if self.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        started = time.perf_counter()
        if self.count_syncs:
            with HostSyncCounter() as counter:
                result = self.inner.execute(plan)
            syncs = counter.count
        else:
            result, syncs = self.inner.execute(plan), 0
        host_ms = (time.perf_counter() - started) * 1e3
        if events:
            events[1].record()
        self.records.append((unit, events, host_ms, syncs))
        return result

    def summary(self) -> dict:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize()
        totals = {}
        for unit, events, host_ms, syncs in self.records:
            entry = totals.setdefault(unit, {"count": 0, "device_ms": 0.0, "host_ms": 0.0, "host_syncs": 0})
            entry["count"] += 1
            entry["host_ms"] += host_ms
            entry["device_ms"] += events[0].elapsed_time(events[1]) if events else host_ms
            entry["host_syncs"] += syncs
        whole = sum(e["device_ms"] for e in totals.values()) or 1.0
        for entry in totals.values():
            entry["share"] = entry["device_ms"] / whole
        return totals


def render(report: dict) -> str:
    """The table printed last (the JSON file has every figure)."""
    lines = [f"gpu_check {'DRY RUN (CPU, helios-tiny: checks the script, measures no GPU)' if report['dry_run'] else ''}"
             f" {report['date']}"]
    sections = report["sections"]

    def row(label, value):
        lines.append(f"  {label:<44} {value}")

    for name, result in sections.items():
        lines.append(f"{name}:" + (f" ERROR {result['error']}" if "error" in result else ""))
        if "error" in result:
            continue
        if name == "environment":
            for key in ("device", "torch", "cuda", "cudnn", "triton"):
                row(key, result[key])
            for tokens, kernel in result["sdpa_kernels"].items():
                row(f"SDPA kernel at {tokens} tokens", kernel)
        elif name == "kernels":
            row("copy bandwidth", f"{result['copy_gb_per_s']:.0f} GB/s")
            for kernel, k in result["kernels"].items():
                row(kernel, f"{'ok' if k['ok'] else 'WRONG'} err {k['max_rel_error']:.1e}  {k['ms']:.3f} ms  "
                            f"{k['gb_per_s']:.0f} GB/s ({k['fraction_of_copy']:.0%} of copy)")
        elif name == "dit":
            row("bf16 GEMM", f"{result['gemm_tflop_per_s']:.3g} TFLOP/s")
            row("attention backend (auto)", result["attention_backend"])
            for stage in result["stages"]:
                others = "  ".join(f"{b} {v['ms']:.1f}" if "ms" in v else f"{b} n/a" for b, v in stage["backends"].items())
                row(f"stage {stage['stage']} ({stage['tokens']} tokens)",
                    f"{stage['ms']:.1f} ms  {stage['tflop_per_s']:.3g} TFLOP/s  MFU {stage['mfu']:.0%}  [{others}]")
                if stage["predicted_ms"] is not None:
                    row("  cost model (scheduler, simulator)", f"{stage['predicted_ms']:.1f} ms predicted")
            row("three stages", f"{result['chunk_ms']:.1f} ms for {result['chunk_tflop']:.3g} TFLOP")
        elif name == "vae":
            if "skipped" in result:
                row("skipped", result["skipped"])
            else:
                row("decode one chunk fp32 / bf16", f"{result['fp32']['ms']:.1f} / {result['bf16']['ms']:.1f} ms "
                                                   f"(x{result['bf16_speedup']:.2f}), bf16 PSNR "
                                                   f"{result['bf16_psnr_db']:.1f} dB")
                batched = result["batched_fp32"]
                row("two chunks: one call / a call each", f"{batched['batched_ms_per_chunk']:.1f} / "
                    f"{batched['single_ms_per_chunk']:.1f} ms per chunk (x{batched['batched_speedup']:.2f}), "
                    f"max difference {batched['max_uint8_difference']} levels")
        elif name == "engine":
            row(f"{result['model']} {result['steps']} {result['size']}",
                f"{result['steady_seconds_per_chunk']:.3f} s/chunk, {result['steady_fps']:.1f} frames/s "
                f"(paper {result['paper_fps']}); first chunk {result['first_chunk_seconds']:.2f} s")
            row("decode overlap", f"x{result['decode_overlap_speedup']:.2f} ({result['serial_decode_fps']:.1f} "
                                  f"frames/s with serial decodes)")
            for unit, stats in result["units"].items():
                row(f"  {unit} x{stats['count']}", f"{stats['device_ms']:.1f} ms device ({stats['share']:.0%}), "
                                                  f"{stats['host_ms']:.1f} ms host")
            row("host syncs per unit (one chunk)", result["host_syncs_per_unit"])
            if result["cuda_sync_warnings_per_chunk"] is not None:
                row("CUDA sync-debug warnings per chunk", f"{result['cuda_sync_warnings_per_chunk']:.1f}")
        elif name == "parallel":
            if "skipped" in result:
                row("skipped", result["skipped"])
            for layout in result.get("layouts", []):
                vae = f", VAE on {layout['vae_device']}" if layout["vae_device"] else ""
                row(f"{layout['sequence_parallel_size']} rank(s){vae}", f"{layout['steady_fps']:.1f} frames/s")
        elif name == "tiny":
            row("helios-tiny bf16 device vs fp32 CPU", f"{'ok' if result['ok'] else 'OUT OF TOLERANCE'}: mean "
                f"{result['mean_abs']:.2f}, max {result['max_abs']} levels, {result['psnr_db']:.1f} dB")
        lines.append(f"  {'(section seconds)':<44} {result['seconds']}")
    if report.get("failed_sections"):
        lines.append(f"FAILED: {', '.join(report['failed_sections'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
