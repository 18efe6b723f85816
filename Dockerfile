# edgepipe: distil, quantize, export and benchmark, all on CPU.
#
#   docker build -t edgepipe .
#   docker run --rm -v "$PWD/runs:/runs" edgepipe                       # Fashion-MNIST default -> runs/default
#   docker run --rm -v "$PWD/runs:/runs" edgepipe edgepipe run --data digits --out /runs/digits
#
# torch: requirements.txt pins torch==2.13.0. On a plain PyPI index that is the CUDA build (~0.5 GB wheel plus
# ~2.2 GB of nvidia-* packages, ~2.7 GB in all). For a CPU-only image (about 2.5 GB smaller) pass PyTorch's CPU
# wheel index as a build argument; torch 2.13.0+cpu is then installed from it first (--no-deps: its dependencies
# are pinned in requirements.txt), and requirements.txt's torch==2.13.0 is already satisfied by it:
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t edgepipe:cpu .
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# dataset-fashion-mnist: the full Fashion-MNIST as IDX files under /usr/share/datasets/fashion-mnist/ (the
# default data source; nothing is downloaded at run time). libgomp1: OpenMP runtime for the CPU kernels.
# Not version-pinned: bookworm's point releases replace libgomp1's version; the Python stack is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends dataset-fashion-mnist libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /work

# Dependencies first, so that editing the source does not reinstall ~3 GB of wheels.
# Same steps as the README: requirements.txt with dependency resolution, the converters with --no-deps
# (onnx2tf pins exact older numpy/onnx/onnxruntime/tensorflow; it works with the newer stack).
COPY requirements.txt requirements-converters.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
    fi \
    && pip install -r requirements.txt \
    && pip install --no-deps -r requirements-converters.txt

COPY . .
RUN pip install --no-deps . \
    && edgepipe targets

VOLUME /runs
CMD ["edgepipe", "run", "--out", "/runs/default"]
