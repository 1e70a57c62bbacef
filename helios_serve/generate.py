"""``helios-serve generate``: one video offline, written to MP4 as its chunks arrive."""

from __future__ import annotations

import argparse
import sys
import time


def _sampling_params(args: argparse.Namespace):
    from .sampling_params import sampling_params_from_args

    params = sampling_params_from_args(args)
    params.check_ranges()  # the model's own limits (sizes, step counts) are checked once it is loaded
    if not (args.image or args.video):
        return params
    from .video_io import read_image, read_video_tail

    # Inputs are read at the output's size when it is given (else the model resizes them), and
    # only the video frames the model uses are kept.
    size = (params.width, params.height) if params.width and params.height else None
    if args.image:
        params = params.with_updates(image=read_image(args.image, size=size))
    if args.video:
        tail = read_video_tail(args.video, size=size)
        params = params.with_updates(video=tail.frames, video_skipped_frames=tail.skipped_frames)
    return params


def run_generate(args: argparse.Namespace) -> int:
    from .config import EngineConfig, ModelConfig, config_from_args
    from .model_executor.checkpoint import resolve_model

    # Every option is checked (and the inputs read) before torch is imported: a mistake is reported at once.
    model_config = config_from_args(ModelConfig, args)
    engine_config = EngineConfig(sequence_parallel_size=args.sequence_parallel_size)
    resolve_model(model_config.model, model_config.download_dir, model_config.revision)
    params = _sampling_params(args)
    from .engine.engine import HeliosEngine

    started = time.perf_counter()
    engine = HeliosEngine(model_config=model_config, engine_config=engine_config)
    try:
        return _write_video(engine, args, params, time.perf_counter() - started)
    finally:
        engine.close()


def _write_video(engine, args: argparse.Namespace, params, load_seconds: float) -> int:
    from tqdm import tqdm

    from .video_io import Mp4Writer

    spec = engine.resolve(args.prompt, params)  # validate before opening the output file
    fps = params.fps or engine.variant.default_fps
    bar = tqdm(total=1, unit="step", desc="generating", file=sys.stderr, dynamic_ncols=True)

    def on_progress(_request_id: str, done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    started = time.perf_counter()
    with Mp4Writer(args.output, fps) as writer:
        for chunk in engine.stream(args.prompt, params, on_progress):
            writer.write(chunk.frames)
            bar.set_postfix_str(f"chunk {chunk.chunk_index + 1}/{chunk.num_chunks}")
    bar.close()
    seconds = time.perf_counter() - started
    print(
        f"wrote {args.output}: {writer.num_frames} frames, {spec.width}x{spec.height}, "
        f"{writer.num_frames / fps:.1f} s at {fps} fps, generated in {seconds:.1f} s "
        f"({writer.num_frames / seconds:.1f} frames/s; model loaded in {load_seconds:.1f} s)"
    )
    return 0
