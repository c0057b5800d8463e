# The retail service: FastAPI on uvicorn. It applies pending migrations when it starts (MIGRATE_ON_START),
# after waiting up to DB_WAIT_SECONDS for the database.
FROM python:3.11-slim

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

USER retail
EXPOSE 8000

# The slim image has no curl; Python is there anyway. /health answers 503 when the database does not.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
