# syntax=docker/dockerfile:1.7
# Two images from one file (the Bento service image comes from `bentoml containerize` instead):
#   pipeline/project image (default target): the roadseg package with its CLI, used by every
#   Kubeflow component and the drift CronJob.
#     docker build -t ghcr.io/roadseg/roadseg-pipeline:$TAG .                        # CUDA torch
#     docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t ... .  # CPU only
#   MLflow tracking server: docker build --target mlflow -t ghcr.io/roadseg/roadseg-mlflow:$TAG .

# --- MLflow tracking server -------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS mlflow-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Same MLflow as the project's clients; psycopg2 for the PostgreSQL store, boto3 for MinIO/S3.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install "mlflow[auth]==3.17.2" "psycopg2-binary==2.9.10" "boto3==1.35.49"

FROM python:3.11-slim-bookworm AS mlflow
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /tmp mlflow
COPY --from=mlflow-build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 HOME=/tmp
USER 10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://localhost:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]

# --- pipeline / project image -----------------------------------------------------------------
FROM python:3.11-slim-bookworm AS build
# The torch wheel index: PyPI's Linux wheel is the CUDA build (GPU nodes; the NVIDIA libraries
# come as pip wheels, the driver from the node). Use https://download.pytorch.org/whl/cpu for a
# CPU-only image a few GB smaller.
ARG TORCH_INDEX=https://pypi.org/simple
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch first, pinned like pyproject.toml, so the project install below never swaps it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
WORKDIR /app
# Dependencies before sources: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir roadseg && touch roadseg/__init__.py && pip install . && pip uninstall -y roadseg
COPY roadseg ./roadseg
# The pipeline DAG and its components: `roadseg pipeline compile|submit` in the image.
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml ./
# Editable, so the library's default params file (repository root = /app/params.yaml) resolves.
RUN pip install --no-deps -e . && roadseg --help > /dev/null

FROM python:3.11-slim-bookworm AS runtime
# git: `dvc pull` of a dataset revision (CA certificates ship with the base image); no compilers
# or build tools in the final image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends git=1:2.39.* \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --user-group --create-home --home-dir /home/roadseg roadseg
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /app /app
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 ROADSEG_PARAMS=/app/params.yaml \
    MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache
USER 10001
# A batch image (pipeline steps, drift job): there is no server to probe.
HEALTHCHECK NONE
ENTRYPOINT ["roadseg"]
CMD ["--help"]
