# edgepipe: distil, quantize, export and benchmark, all on CPU.
#
#   docker build -t edgepipe .
#   docker run --rm -v "$PWD/runs:/runs" edgepipe                       # the embedded default (Fashion-MNIST) -> runs/default
#   docker run --rm -v "$PWD/runs:/runs" edgepipe edgepipe release /runs/default --target tflite-int8 --out /runs/bundle
#   docker run --rm -v "$PWD/runs:/runs" edgepipe edgepipe run --data digits --out /runs/digits
#   docker run --rm edgepipe edgepipe doctor                            # tool versions, data, GPU
#
# The install is the README's first command, step for step and in the same order (tests/test_dockerfile.py keeps
# them in step): apt-get update && apt-get install -y dataset-fashion-mnist, python3 -m venv .venv,
# .venv/bin/pip install -r requirements.txt, .venv/bin/pip install --no-deps -r requirements-converters.txt,
# .venv/bin/pip install --no-deps -e . ; the README's last step, `edgepipe run --out runs/default`, is the default
# command (writing to the /runs volume). Two additions: libgomp1 (the OpenMP runtime a slim image lacks) and the
# optional torch-first step below. `edgepipe doctor` checks the result at build time.
#
# torch: requirements.txt pins torch==2.13.0. On a plain PyPI index that is the CUDA build (~0.5 GB wheel plus
# ~2.2 GB of nvidia-* packages, ~2.7 GB in all). For a CPU-only image (about 2.5 GB smaller) pass PyTorch's CPU
# wheel index as a build argument; torch 2.13.0+cpu is then installed from it first (--no-deps: its dependencies
# are pinned in requirements.txt), and requirements.txt's torch==2.13.0 is already satisfied by it:
#   docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t edgepipe:cpu .
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=""
ARG DEBIAN_FRONTEND=noninteractive

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PATH="/work/.venv/bin:$PATH"

WORKDIR /work

# dataset-fashion-mnist: the full Fashion-MNIST as IDX files under /usr/share/datasets/fashion-mnist/ (the
# embedded default's data; nothing is downloaded at run time). Not version-pinned: the Python stack is.
# hadolint ignore=DL3008,DL3015
RUN apt-get update && apt-get install -y dataset-fashion-mnist \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

# Dependencies first, so that editing the source does not reinstall ~3 GB of wheels.
COPY requirements.txt requirements-converters.txt ./
RUN python3 -m venv .venv \
    && if [ -n "$TORCH_INDEX_URL" ]; then \
        .venv/bin/pip install --no-deps --index-url "$TORCH_INDEX_URL" "torch==2.13.0"; \
    fi \
    && .venv/bin/pip install -r requirements.txt \
    && .venv/bin/pip install --no-deps -r requirements-converters.txt

COPY . .
RUN .venv/bin/pip install --no-deps -e . \
    && edgepipe doctor

VOLUME /runs
CMD ["edgepipe", "run", "--out", "/runs/default"]
