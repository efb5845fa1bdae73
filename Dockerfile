# feinschliff worker image for GPU training and the Prefect worker.
# Not built in CI (no Docker engine there); linted by tests/unit/test_dockerfile.py (hadolint).
#   docker build -t feinschliff:latest .
#   docker run --gpus all --shm-size=16g -v /srv/feinschliff:/cache feinschliff:latest \
#     feinschliff run recipes/support-de-8b.yaml
# (Docker's default 64 MB /dev/shm is too small for DataLoader workers, NCCL and vLLM.)
# The defaults build the GPU image. A CPU image (no CUDA base, CPU torch; bookworm ships Python 3.11,
# an Ubuntu base gets it from the deadsnakes PPA):
#   docker build --build-arg BASE_IMAGE=debian:bookworm \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t feinschliff:cpu .
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${BASE_IMAGE}
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
# A PyPI mirror (devpi, Artifactory) where pypi.org is out of reach; pip reads it from the env.
# No credentials in it: build args stay readable in `docker history`.
ARG PIP_INDEX_URL=https://pypi.org/simple

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FEINSCHLIFF_HOME=/cache \
    FEINSCHLIFF_PROJECT_ROOT=/app \
    HF_HOME=/cache/hf \
    PREFECT_LOGGING_EXTRA_LOGGERS=feinschliff \
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore

# Python 3.11 (the lock is resolved for 3.11): from deadsnakes on Ubuntu, Debian bookworm has it.
# libnuma1: the CPU vLLM's kernels (vllm._C) do not load without it.
RUN apt-get update \
 && if grep -q '^ID=ubuntu' /etc/os-release; then \
      apt-get install -y --no-install-recommends software-properties-common=0.99.* gpg-agent=2.4.* \
      && add-apt-repository -y ppa:deadsnakes/ppa \
      && apt-get update; \
    fi \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* git=1:2.* \
      ca-certificates=20* libnuma1=2.0.* \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Ubuntu 24.04 images ship a user `ubuntu` with UID 1000: remove it, or useradd fails.
RUN (userdel --remove ubuntu || true) \
 && useradd --create-home --uid 1000 feinschliff && mkdir -p /cache && chown feinschliff /cache

# Dependencies first (cached layer): CUDA torch from the PyTorch index, then the lock without its
# CPU torch pin (torch==2.13.0+cpu).
COPY requirements.lock pyproject.toml README.md ./
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0 \
 && grep -v '^torch==' requirements.lock > /tmp/req.txt \
 && /opt/venv/bin/pip install -r /tmp/req.txt
ENV PATH=/opt/venv/bin:$PATH

COPY src ./src
COPY flows ./flows
COPY recipes ./recipes
COPY evals ./evals
COPY configs ./configs
# `prefect deploy` reads it (its pull step changes into $FEINSCHLIFF_PROJECT_ROOT, /app)
COPY prefect.yaml ./
COPY data ./data
# install_vllm.sh / install_axolotl.sh build their venvs under /cache/venvs; both pin the CPU
# torch (+cpu), which is not on PyPI: run them with
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (README "Docker").
COPY scripts ./scripts
RUN pip install --no-deps -e .

USER 1000:1000
# No ENTRYPOINT: Prefect's Docker and Kubernetes workers pass the whole command line
# (`prefect flow-run execute ...`) as the container's command / args.
CMD ["feinschliff", "--help"]
