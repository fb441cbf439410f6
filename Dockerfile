# syntax=docker/dockerfile:1.7
# Two images from one file (the Bento service image comes from `bentoml containerize` instead):
#   pipeline/project image (default target): the roadseg package with its CLI, used by every
#   Kubeflow component and the drift CronJob.
#     docker build -t ghcr.io/roadseg/roadseg-pipeline:$TAG .     # CUDA torch (the train step's GPUs)
#     docker build --build-arg VARIANT=cpu -t ghcr.io/roadseg/roadseg-pipeline:$TAG-cpu .  # CPU only
#   MLflow tracking server: docker build --target mlflow -t ghcr.io/roadseg/roadseg-mlflow:$TAG .
# Every package comes from a lock compiled against requirements/lock.txt (scripts/lock.sh), hashes
# checked: the images run the versions the tests ran.

# --- MLflow tracking server -------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS mlflow-build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The clients' MLflow (lock.txt's); psycopg2 for the PostgreSQL store, boto3 for MinIO/S3.
COPY requirements/mlflow-server.txt /tmp/requirements.txt
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-deps --require-hashes -r /tmp/requirements.txt \
    && /opt/venv/bin/pip check

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
# gpu (default: the pipeline's train step runs on GPU nodes): requirements/runtime-gpu.txt, PyPI's
# CUDA torch (the NVIDIA libraries come as pip wheels, the driver from the node). cpu: a few GB
# smaller, runtime-cpu.txt, torch's CPU build from TORCH_INDEX (PyPI has only CUDA builds for
# Linux). Every other package is the same in both.
ARG VARIANT=gpu
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies before sources: a code change does not reinstall them.
COPY requirements/runtime-${VARIANT}.txt /tmp/requirements.txt
RUN if [ "$VARIANT" = cpu ]; then set -- --extra-index-url "$TORCH_INDEX"; fi \
    && pip install --no-deps --require-hashes "$@" -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY roadseg ./roadseg
# The pipeline DAG and its components: `roadseg pipeline compile|submit` in the image.
COPY components ./components
COPY pipelines ./pipelines
COPY params.yaml ./
# The Bento's build context: the pipeline's package step builds the Bento in this image
# (roadseg/release/packaging.py reads bentofile.yaml and what it includes from /app).
COPY bentofile.yaml ./
COPY bento ./bento
COPY requirements/serve.txt ./requirements/
# Editable, so the library's default params file (repository root = /app/params.yaml) resolves;
# no dependencies: the lock above has them all (pip check says so).
RUN pip install --no-deps --no-build-isolation -e . && pip check && roadseg --help > /dev/null

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
