# syntax=docker/dockerfile:1.7
# PromptOnce web app: on a CUDA GPU host (default), or on a CPU-only host (VARIANT=cpu).
#
#   docker build -t promptonce .                                            # GPU image (CUDA torch)
#   docker run --gpus all -p 7860:7860 promptonce                          # then open http://localhost:7860
#   docker build --build-arg VARIANT=cpu -t promptonce-cpu .                # CPU image (CPU torch, no CUDA base)
#   docker run -p 7860:7860 promptonce-cpu
#   docker build --build-arg PROMPTONCE_CHECKPOINTS="sam2.1_hiera_large sam_vit_h" -t promptonce .
#   docker build --build-arg PROMPTONCE_CHECKPOINTS="" -t promptonce .      # bake no weights
#
# Torch: requirements.txt pins torch==2.14.1. On Linux x86_64 the PyPI wheel of torch is a CUDA build
# (it brings its own CUDA/cuDNN libraries as nvidia-* wheels), which is what the GPU image installs by
# default; set TORCH_INDEX to take it from a PyTorch index for a given CUDA instead, e.g.
# --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128. The GPU build checks that the
# installed torch is a CUDA build and fails otherwise. The host needs an NVIDIA driver recent enough
# for that CUDA and the NVIDIA container toolkit (--gpus all). VARIANT=cpu starts from plain Ubuntu
# and takes torch from PyTorch's CPU index (no CUDA libraries); it offers the same models, slowly for
# SAM and SAM 2.
#
# sam2 is built without its optional CUDA extension (SAM2_BUILD_CUDA=0), as everywhere in PromptOnce:
# only SAM 2's small-hole filling is skipped.

ARG VARIANT=gpu
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-base-ubuntu22.04
ARG CPU_IMAGE=ubuntu:22.04

FROM ${CUDA_IMAGE} AS base-gpu
FROM ${CPU_IMAGE} AS base-cpu
# hadolint ignore=DL3006
FROM base-${VARIANT}

ARG VARIANT
ARG PYTHON_VERSION=3.11
ARG TORCH_INDEX=""
# Checkpoints to bake into the image (names of promptonce.backends.weights: model names such as
# sam2.1_hiera_t / sam_vit_b, or file names/stems such as sam2.1_hiera_tiny). Empty = none; missing
# ones are downloaded on first use into the user's cache.
ARG PROMPTONCE_CHECKPOINTS="sam2.1_hiera_tiny sam_vit_b"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# ca-certificates tracks the distribution's current roots on purpose (not pinned)
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A standalone CPython (the one the pinned requirements were proven with), via uv.
COPY --from=ghcr.io/astral-sh/uv:0.5.11 /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python
RUN uv venv --seed --python "${PYTHON_VERSION}" /opt/venv
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

WORKDIR /app

# Dependencies first (cached while only the code changes). Torch before anything else so that no
# other package can pull in a different build; then sam2 against it, without build isolation.
COPY requirements.txt ./
RUN case "${VARIANT}" in gpu|cpu) ;; *) echo "VARIANT must be gpu or cpu, got ${VARIANT}" >&2; exit 2 ;; esac \
 && idx="${TORCH_INDEX}" \
 && if [ -z "${idx}" ] && [ "${VARIANT}" = "cpu" ]; then idx=https://download.pytorch.org/whl/cpu; fi \
 && if [ -n "${idx}" ]; then python -m pip install --index-url "${idx}" "torch==2.14.1" "torchvision==0.29.1"; \
    else python -m pip install "torch==2.14.1" "torchvision==0.29.1"; fi \
 && python -m pip install -r requirements.txt \
 && SAM2_BUILD_CUDA=0 python -m pip install --no-build-isolation "sam2==1.1.0" \
 && python -c "import sys, torch; v = sys.argv[1]; ok = bool(torch.version.cuda) or v == 'cpu'; print('torch', torch.__version__, 'CUDA', torch.version.cuda); sys.exit(0 if ok else 'torch is a CPU-only build: set TORCH_INDEX to a CUDA index, or build with VARIANT=cpu')" "${VARIANT}"

# Bake the chosen checkpoints (verified against their published sha256) into a read-only folder that
# PromptOnce searches first ($PROMPTONCE_WEIGHTS). Only the few files the fetch needs are copied here,
# so editing the app does not download the weights again.
ENV PROMPTONCE_WEIGHTS=/opt/promptonce/weights
COPY promptonce/__init__.py promptonce/errors.py promptonce/types.py promptonce/py.typed ./promptonce/
COPY promptonce/backends/__init__.py promptonce/backends/weights.py promptonce/backends/hub.py ./promptonce/backends/
RUN mkdir -p "${PROMPTONCE_WEIGHTS}" \
 && if [ -n "${PROMPTONCE_CHECKPOINTS}" ]; then \
      PROMPTONCE_CACHE="${PROMPTONCE_WEIGHTS}" python -m promptonce.backends.weights fetch ${PROMPTONCE_CHECKPOINTS} \
      && rm -rf "${PROMPTONCE_WEIGHTS}"/*.part "${PROMPTONCE_WEIGHTS}/.hub-staging"; \
    fi \
 && chmod -R a+rX /opt/promptonce

# The application.
COPY pyproject.toml README.md app.py ./
COPY assets ./assets
COPY promptonce ./promptonce
RUN python -m pip install --no-deps --no-build-isolation . \
 && python -c "import promptonce, promptonce.backends.sam, promptonce.backends.sam2"

# Non-root user (uid 1000, as Hugging Face Spaces expects) with its own writable cache for checkpoints
# downloaded at run time.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin app
USER 1000
ENV HOME=/home/app \
    PROMPTONCE_CACHE=/home/app/.cache/promptonce \
    GRADIO_SERVER_NAME=0.0.0.0 \
    GRADIO_SERVER_PORT=7860 \
    PORT=7860

EXPOSE 7860
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:7860/', timeout=8)"]

CMD ["python", "app.py"]
