# feinschliff worker image for GPU training and the Prefect worker.
# Not built in CI (no Docker engine there); linted by tests/unit/test_dockerfile.py (hadolint).
#   docker build -t feinschliff:latest .
#   docker run --gpus all -e FEINSCHLIFF_HOME=/cache -v /srv/feinschliff:/cache feinschliff:latest \
#     feinschliff run recipes/support-de-8b.yaml
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FEINSCHLIFF_HOME=/cache \
    FEINSCHLIFF_PROJECT_ROOT=/app \
    HF_HOME=/cache/hf \
    PREFECT_LOGGING_EXTRA_LOGGERS=feinschliff \
    PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore

# Python 3.11 from deadsnakes: the lock is resolved for 3.11.
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common=0.99.* gpg-agent=2.4.* \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11=3.11.* python3.11-venv=3.11.* git=1:2.* \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Ubuntu 24.04 images ship a user `ubuntu` with UID 1000: remove it, or useradd fails.
RUN (userdel --remove ubuntu || true) \
 && useradd --create-home --uid 1000 feinschliff && mkdir -p /cache && chown feinschliff /cache

# Dependencies first (cached layer): CUDA torch from the PyTorch index, then the lock.
COPY requirements.lock pyproject.toml README.md ./
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/pip install --index-url https://download.pytorch.org/whl/cu128 torch==2.13.0 \
 && grep -v '^torch==' requirements.lock > /tmp/req.txt \
 && /opt/venv/bin/pip install -r /tmp/req.txt
ENV PATH=/opt/venv/bin:$PATH

COPY src ./src
COPY flows ./flows
COPY recipes ./recipes
COPY evals ./evals
COPY configs ./configs
COPY data ./data
# a local vLLM builds its venv with these (the Axolotl venv is CPU-only: README "Docker")
COPY scripts ./scripts
RUN pip install --no-deps -e .

USER 1000:1000
# No ENTRYPOINT: Prefect's Docker and Kubernetes workers pass the whole command line
# (`prefect flow-run execute ...`) as the container's command / args.
CMD ["feinschliff", "--help"]
