# Slim image with the worker, the CLI and Flower; no secrets baked in.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY config ./config
COPY tasks ./tasks
COPY worker ./worker
RUN pip install . && useradd --create-home --uid 10001 clix
USER 10001

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
