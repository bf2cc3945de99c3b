# syntax=docker/dockerfile:1
# Training image: a CUDA build of PyTorch, the project installed, the `segment` CLI as entrypoint.
# The KubernetesPodOperator of the nightly DAG (segmentation/k8s.py) runs it on a GPU node as
#   python -m segmentation.distributed pod --run-json ...               (one GPU)
#   torchrun --standalone --nproc_per_node=N -m segmentation.distributed pod ...   (N GPUs, DDP)
#
# Build from the repository root:
#   docker build -f docker/train.Dockerfile -t concrete-segments-train:0.1.0 .
# Only the NVIDIA driver is needed on the node (the NVIDIA container toolkit / device plugin): PyPI's
# Linux x86_64 torch wheel is the CUDA build and brings its CUDA and cuDNN libraries as wheels.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY segmentation ./segmentation
COPY validation ./validation
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.13.0
ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SEGMENT_DEVICE=cuda \
    SEGMENT_DATA_DIR=/scratch \
    DBT_SEND_ANONYMOUS_USAGE_STATS=False \
    DO_NOT_TRACK=1
RUN groupadd --gid 10001 segment \
    && useradd --uid 10001 --gid 10001 --home-dir /scratch --create-home --shell /usr/sbin/nologin segment
COPY --from=build /wheels /wheels
# torch first, pinned: the project's own pin (torch==2.13.0) is then already satisfied
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && segment --help > /dev/null \
    && python -m segmentation.distributed --help > /dev/null
USER 10001:10001
WORKDIR /scratch
ENTRYPOINT ["segment"]
CMD ["--help"]
