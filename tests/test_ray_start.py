"""A Ray deployment whose model cannot load stops, as a single server does (tests/test_storage_failures.py),
instead of Ray Serve restarting the failing replica for ever behind an unready endpoint."""

from __future__ import annotations

import subprocess
import sys

from live_server import free_port, ray_environment


def test_a_model_that_fails_to_load_stops_a_ray_deployment_with_the_cause(tmp_path):
    checkpoint = tmp_path / "broken-checkpoint"
    checkpoint.mkdir()
    (checkpoint / "model_index.json").write_text('{"_class_name": "HeliosPyramidPipeline"}')
    started = subprocess.run([sys.executable, "-m", "helios_serve.cli", "serve", str(checkpoint), "--replicas", "1",
                              "--port", str(free_port()), "--data-dir", str(tmp_path / "data"), "--log-level", "error"],
                             capture_output=True, text=True, timeout=240, env=ray_environment(tmp_path / "home"),
                             start_new_session=True)
    assert started.returncode == 1, started.stderr[-4000:]
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("helios-serve: error: replica-0: loading"), started.stderr[-4000:]
    assert "scheduler_config.json is missing" in last and str(tmp_path) not in last
