# The DPO trainer: torch with CUDA, TRL, PEFT. PyPI's Linux torch wheel bundles
# the CUDA runtime; the host's NVIDIA driver arrives through the NVIDIA
# container toolkit (the compose file reserves a GPU for this service).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf-cache

RUN useradd --create-home --uid 1000 sparring \
    && mkdir -p /data \
    && chown sparring:sparring /data

WORKDIR /app
# torch first and pinned, so the ml extra does not pick another build.
RUN pip install torch==2.13.0
COPY pyproject.toml README.md ./
COPY sparring ./sparring
COPY configs ./configs
RUN pip install ".[ml]"

USER sparring
ENTRYPOINT ["sparring"]
CMD ["train", "--config", "/app/configs/compose.yaml", "--run-dir", "/data/runs/compose"]
