# One image for the API, the worker and the witness (docker-compose.yml runs it three ways).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY core core
COPY metrics metrics
COPY db db
COPY activities activities
COPY workflows workflows
COPY services services
COPY api api
COPY quire quire
COPY worker.py ./
RUN pip install --no-cache-dir . && useradd --system --uid 10001 quire && mkdir -m 700 /witness && chown quire /witness
USER quire
EXPOSE 8000
CMD ["uvicorn", "--factory", "api.app:create_app", "--host", "0.0.0.0", "--port", "8000"]
