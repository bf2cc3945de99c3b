# syntax=docker/dockerfile:1
# Airflow image: the official apache/airflow 3.3.2 base, plus the project and its DAG.
# Training runs in-process on CPU by default (SEGMENT_TRAINING_MODE=in_process), so this image
# takes the CPU wheel of torch; SEGMENT_TRAINING_MODE=kubernetes sends training to the GPU image
# (docker/train.Dockerfile) through the cncf.kubernetes provider installed here.
#
# Build from the repository root:
#   docker build -f docker/airflow.Dockerfile -t concrete-segments-airflow:0.1.0 .

ARG AIRFLOW_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_IMAGE}
ARG AIRFLOW_VERSION=3.3.2
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV AIRFLOW__CORE__LOAD_EXAMPLES=False \
    DBT_SEND_ANONYMOUS_USAGE_STATS=False \
    DO_NOT_TRACK=1 \
    SEGMENT_DATA_DIR=/opt/airflow/data \
    SEGMENT_DBT_PROJECT_DIR=/opt/airflow/dags/dbt
COPY --chown=airflow:0 pyproject.toml README.md /opt/segmentation/
COPY --chown=airflow:0 segmentation /opt/segmentation/segmentation
COPY --chown=airflow:0 validation /opt/segmentation/validation
# The CPU torch wheel first (an unpinned torch pulls the multi-GB CUDA build), then the project with
# Airflow pinned to the base image's version, as the official image's documentation asks.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}" \
    && pip install --no-cache-dir "apache-airflow==${AIRFLOW_VERSION}" \
        "apache-airflow-providers-cncf-kubernetes==10.25.0" /opt/segmentation \
    && python -c "import segmentation, airflow.providers.cncf.kubernetes"
COPY --chown=airflow:0 dags /opt/airflow/dags
# the base image's airflow user (uid 50000, group 0)
USER 50000:0
