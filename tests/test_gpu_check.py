"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on a CPU (helios-tiny),
so the one command meant for an H100 is known to work before a GPU is at hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_dry_run_exercises_every_section(tmp_path):
    output = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(output)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(output.read_text())
    sections = report["sections"]
    assert report["dry_run"] and report["failed_sections"] == []
    assert set(sections) == {"environment", "kernels", "dit", "vae", "engine", "tiny", "parallel"}
    assert all("error" not in s for s in sections.values()), sections
    # The self-attention of each pyramid stage at helios-tiny's default size (192x320).
    assert list(sections["environment"]["sdpa_kernels"]) == ["735", "1140", "2760"]
    assert sections["kernels"]["ok"] and sections["kernels"]["interpreter"]
    assert set(sections["kernels"]["kernels"]) == {"norm_modulate", "layer_norm", "gated_residual", "qk_norm_rope"}
    assert [s["tokens"] for s in sections["dit"]["stages"]] == [735, 1140, 2760]
    assert all(s["tflop"] > 0 and s["ms"] > 0 for s in sections["dit"]["stages"])
    batched = sections["vae"]["batched_fp32"]  # two requests' chunks in one VAE call vs a call each
    assert batched["batch"] == 2 and batched["batched_ms_per_chunk"] > 0 and batched["single_ms_per_chunk"] > 0
    assert batched["max_uint8_difference"] <= 2
    engine = sections["engine"]
    assert engine["frames"] == [33, 33, 31] and engine["steady_fps"] > 0  # 99 frames trimmed to 4n+1 = 97
    # decode_wait: steps that only wait for the last decode running behind (the decode overlap)
    assert set(engine["units"]) - {"decode_wait"} == {"encode", "begin_chunk", "denoise", "next_stage", "decode"}
    assert engine["serial_decode_fps"] > 0 and engine["decode_overlap_speedup"] > 0
    assert engine["units"]["denoise"]["count"] == 2 * 3 + 3 + 3  # chunk 0 amplified ([2,2,2]), then [1,1,1]
    # Counted on the meta device: only the decode reads from the device (non-finite flag, frames).
    assert engine["host_syncs_per_unit"] == {"encode": 0, "begin_chunk": 0, "denoise": 0, "next_stage": 0,
                                             "decode": 2}
    assert sections["tiny"]["ok"] and sections["tiny"]["amplified_first_chunk"]
    layouts = [(layout["sequence_parallel_size"], layout["vae_device"]) for layout in sections["parallel"]["layouts"]]
    assert layouts == [(1, None), (2, None), (1, "cpu")]  # two gloo ranks stand in for two GPUs
    assert all(layout["steady_fps"] > 0 for layout in sections["parallel"]["layouts"])
    assert "DRY RUN" in done.stdout and "engine:" in done.stdout
