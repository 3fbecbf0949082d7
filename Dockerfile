# One image for api, worker and gpu-worker. The gpu-worker needs a CUDA-enabled torch: build with
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim

ARG TORCH_INDEX=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    IF_DATA_DIR=/data IF_MODELS_DIR=/models

RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
RUN useradd --create-home --uid 1000 forge
WORKDIR /srv/instructforge

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY trainer ./trainer
COPY migrations ./migrations
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX"; \
    else pip install torch==2.13.0; fi \
 && pip install ".[train]"

RUN mkdir -p /data /models && chown forge /data /models
USER forge
EXPOSE 8000
CMD ["instructforge", "serve", "--host", "0.0.0.0", "--port", "8000", "--migrate"]
