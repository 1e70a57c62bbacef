"""The import-layer contract (../shared/docs/engineering-style.md), checked on every run.

Layers, lowest first: kernels; model_executor (the model, knows nothing of requests' serving);
the engine and core (scheduler, engine, executor, request records, sampling params, config,
accelerator figures);
the serving entrypoints (HTTP, jobs, streaming, CLI). The integrations (vLLM-Omni, SGLang,
Ray Serve) are leaves: only the composition root that launches them imports them. Above
model_executor, only its torch-free contract modules may be imported, except by the executor
(the one place that builds a ModelRunner). The scheduler and the engine core import no torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENGINE_LAYER = {"core", "engine", "executor", "parallel_executor", "request", "errors", "outputs", "sampling_params",
                "config", "hardware", "simulated_executor"}
CONTRACT_MODULES = {f"helios_serve.model_executor.{name}" for name in ("step_io", "config", "cost_model", "checkpoint")}
"""What the layers above model_executor may import from it: its data types and pure functions
(the scheduler contract, the transformer config, the cost model, checkpoint variants)."""
RUNNER_HOSTS = {"helios_serve.executor", "helios_serve.parallel_executor", "helios_serve.integrations.vllm_omni.pipeline",
                "helios_serve.integrations.sglang.pipeline"}
"""Those that build a ModelRunner and drive it through its public calls."""
INTEGRATION_LAUNCHERS = {"helios_serve.entrypoints.serve"}
"""The composition root: `helios-serve serve --replicas N` starts the Ray Serve integration."""
RUNNER_MODULES = {f"helios_serve.model_executor.{name}" for name in ("model_runner", "resume", "sequence_parallel")}
"""What only the runner hosts import: the runner, (the executor) resume snapshots and (the
sequence-parallel executor) joining a group of ranks."""
KNOWN_EXCEPTIONS = {
    # `helios-serve check` times one forward of the transformer (a model-level smoke test).
    ("helios_serve.cli", "helios_serve.model_executor.smoke"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[0] in ("model_executor", "kernels"):
        parts = ["helios_serve", *parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every helios_serve module a file imports (module level or inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                if node.module:
                    found.add(".".join([*base, node.module]))
                else:  # from .. import name: the named submodules
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            else:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] == "helios_serve"}


def _graph() -> dict[str, set[str]]:
    files = [p for folder in ("helios_serve", "model_executor", "kernels") for p in (REPO / folder).rglob("*.py")]
    return {_module_name(path): _imports(path) for path in files}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "helios_serve"


def _violations() -> list[tuple[str, str]]:
    found = []
    for module, imports in _graph().items():
        area = _area(module)
        for target in imports:
            target_area = _area(target)
            if target_area == area or (module, target) in KNOWN_EXCEPTIONS:
                continue
            if area == "kernels":
                allowed = False
            elif area == "model_executor":
                allowed = target_area == "kernels"
            elif target_area == "kernels":
                allowed = False  # kernels are chosen by the model, from config
            elif target_area == "model_executor":
                runner = target in RUNNER_MODULES and module in RUNNER_HOSTS
                allowed = target in CONTRACT_MODULES or runner
            elif target_area == "integrations":
                allowed = module in INTEGRATION_LAUNCHERS
            elif area in ENGINE_LAYER:
                allowed = target_area in ENGINE_LAYER
            else:
                allowed = True  # the serving entrypoints may use everything below them
            if not allowed:
                found.append((module, target))
    return sorted(found)


def test_every_import_follows_the_layers():
    assert _violations() == []


def test_the_contract_catches_a_layer_violation(tmp_path, monkeypatch):
    """The checker itself: a model_executor module importing the serving layer is reported."""
    graph = _graph()
    graph["helios_serve.model_executor.model_runner"] = graph["helios_serve.model_executor.model_runner"] | {
        "helios_serve.engine.engine_core"}
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: graph)
    assert _violations() == [("helios_serve.model_executor.model_runner", "helios_serve.engine.engine_core")]


def _imported_by(modules: str) -> set[str]:
    probe = f"import sys\nimport {modules}\nprint(' '.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in result.stdout.split()}


def test_scheduler_and_engine_core_import_no_torch():
    assert "torch" not in _imported_by("helios_serve.core.scheduler, helios_serve.engine.engine_core, "
                                       "helios_serve.request")


def test_jobs_know_nothing_of_http_or_torch():
    """The job manager, its sink, store and statuses run without a web framework or tensors."""
    imported = _imported_by("helios_serve.jobs.manager, helios_serve.jobs.sink, helios_serve.jobs.status")
    assert not imported & {"torch", "fastapi", "starlette", "uvicorn"}, imported & {"torch", "fastapi", "starlette"}
