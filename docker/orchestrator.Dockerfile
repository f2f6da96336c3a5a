# The orchestrator: graph, agents' HTTP clients, bus, swapper, traces.
# It talks to vLLM and Redis over the network and never loads weights, so the
# image carries neither torch nor CUDA (the ml extra is the trainer's).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 sparring \
    && mkdir -p /data \
    && chown sparring:sparring /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sparring ./sparring
COPY configs ./configs
RUN pip install . \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"

USER sparring
ENTRYPOINT ["sparring"]
CMD ["run", "--config", "/app/configs/compose.yaml", "--no-progress", "--trace-stdout"]
