# labelpilot ML backend: one image for CPU and NVIDIA GPU hosts (see docs/docker.md).
#
# torch comes from PyPI as pinned in pyproject.toml; its Linux wheel brings the CUDA runtime
# libraries with it, so this plain Python base runs on CPU, and on a GPU when the container is
# started with one (docker-compose.cuda.yml; host needs the NVIDIA driver + container toolkit).
#
#   docker build -t labelpilot .
#   docker run --init -p 9090:9090 labelpilot            # backend + worker + embedded Redis
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# opencv-python (the non-headless build ultralytics pulls in) needs libGL and libgthread to import.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; /data and /models are created here so that named volumes mounted on them start
# out owned by this user.
RUN groupadd --gid 1000 labelpilot \
    && useradd --uid 1000 --gid labelpilot --create-home --shell /usr/sbin/nologin labelpilot \
    && mkdir -p /data /models \
    && chown labelpilot:labelpilot /data /models

WORKDIR /src

# Dependencies first, in their own layer (torch + CUDA libraries are several GB): it is rebuilt
# only when pyproject.toml changes, not on every code change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The project itself (.dockerignore keeps venvs, caches, tests and weights out of the context).
COPY . .
RUN pip install --no-cache-dir /src \
    && rm -rf /src

# Runtime layout: state under /data (Redis of the embedded mode, metrics, ultralytics settings,
# weights that ultralytics downloads into the working directory), models under /models.
ENV LABELPILOT_DATA_DIR=/data \
    MODEL_DIR=/models \
    YOLO_CONFIG_DIR=/data/ultralytics

WORKDIR /data
# numeric, so that runtimes can tell it is not root (Kubernetes runAsNonRoot)
USER 1000:1000
EXPOSE 9090

# `serve` alone = gunicorn + one RQ worker + an embedded Redis when REDIS_URL is unset.
# docker-compose.yml runs `labelpilot serve --no-worker` and `labelpilot worker` instead.
CMD ["labelpilot", "serve"]
