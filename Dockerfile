# The retail service: FastAPI on uvicorn. It applies pending migrations when it starts (MIGRATE_ON_START),
# after waiting up to DB_WAIT_SECONDS for the database.
#
# BASE_IMAGE: any image with Python 3.11+ as `python`/`pip` (pip installing where `python` imports from) and
# `useradd`. Where no registry is reachable, `./dev images` builds it with a base made here from Debian's
# packages (deploy/podman/podman_images.py).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 retail

COPY pyproject.toml README.md ./
COPY retail_contract ./retail_contract
COPY api ./api
COPY etl ./etl
RUN pip install ".[service]"

# The embedded database, when DATABASE_URL names no other: in a directory the service's user owns (the
# code's default, ./retail.db, would be in /app, which it cannot write, and the service would not start).
# Mount a volume there to keep it: `-v retail-data:/var/lib/retail`.
RUN install -d -o retail -g retail /var/lib/retail
ENV DATABASE_URL=sqlite:////var/lib/retail/retail.db

USER retail
EXPOSE 8000

# The slim image has no curl; Python is there anyway. /health answers 503 when the database does not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
