# sdrt images. Two named targets:
#   docker build --target cpu -t sdrt:cpu .    ONNX Runtime on CPU (the torch-free runtime)
#   docker build --target gpu -t sdrt:gpu .    TensorRT 11 + ONNX Runtime GPU on an NVIDIA CUDA runtime base
# Run:   docker run --rm -v "$PWD/bundle:/bundle" sdrt:cpu generate /bundle "a photo of a cat" -o /bundle/out.png
#        docker run --rm --gpus all -v "$PWD/bundle:/bundle" sdrt:gpu build /bundle --profile 512x512
# Engines are built per GPU: build them in the container on the machine that serves (they land in
# /bundle/engines and are reused while TensorRT version and GPU stay the same).
# Neither image has been built by its author (no Docker daemon there); see docs/gpu.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# Python >= 3.11: onnxruntime-gpu 1.31 (the [gpu] extra) requires it; Ubuntu 24.04's python3 is 3.12.
# The CUDA major of this base must match the TensorRT and onnxruntime-gpu wheels pip resolves (TensorRT 11
# publishes CUDA 13 wheels); cuDNN is needed by ONNX Runtime's CUDA provider.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

# ---- cpu: the runtime on ONNX Runtime CPU --------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /src
COPY . /src
RUN pip install --no-cache-dir "/src[cpu]" \
    && useradd --create-home --uid 10001 sdrt
USER 10001
WORKDIR /home/sdrt
ENTRYPOINT ["sdrt"]
CMD ["--help"]

# ---- gpu: TensorRT engines and ONNX Runtime CUDA/TensorRT providers -------------------------------------
FROM ${CUDA_IMAGE} AS gpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
WORKDIR /src
COPY . /src
# TensorRT's library wheels come from NVIDIA's index; [gpu] brings onnxruntime-gpu (never the CPU build).
RUN pip install --no-cache-dir --extra-index-url https://pypi.nvidia.com "/src[gpu]" \
    && useradd --create-home --uid 10001 sdrt
USER 10001
WORKDIR /home/sdrt
ENTRYPOINT ["sdrt"]
CMD ["--help"]
