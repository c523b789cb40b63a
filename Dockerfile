# syntax=docker/dockerfile:1
# Arena Realtime: multi-stage build. The first stage installs the project into a virtualenv;
# the runtime stage copies only that virtualenv onto a clean slim image and runs as a non-root
# user. Build: docker build -t arena-realtime .   Run: see docker-compose.yml and docs/operations.md

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (cached while only the code changes): install the project's requirements
# from pyproject.toml against an empty package skeleton, then the real code.
COPY pyproject.toml README.md ./
RUN mkdir server handlers pubsub storage \
    && touch server/__init__.py handlers/__init__.py pubsub/__init__.py storage/__init__.py \
    && pip install . \
    && pip uninstall -y arena-realtime
COPY server ./server
COPY handlers ./handlers
COPY pubsub ./pubsub
COPY storage ./storage
RUN pip install --no-deps . && arena-realtime --help > /dev/null

FROM python:${PYTHON_VERSION}-slim AS runtime
LABEL org.opencontainers.image.title="arena-realtime" \
      org.opencontainers.image.description="Multiplexed WebSocket channels with history and recovery"
RUN groupadd --system --gid 10001 arena \
    && useradd --system --uid 10001 --gid arena --home-dir /app --shell /usr/sbin/nologin arena \
    && mkdir -p /app/data \
    && chown -R arena:arena /app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8080 \
    DATA_DIR=/app/data
WORKDIR /app
USER arena
EXPOSE 8080
VOLUME ["/app/data"]
# Liveness only (/health); readiness (/ready) is for the load balancer.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8080'), timeout=2)"]
# aiohttp stops gracefully on SIGTERM: WebSockets get 1001, in-flight requests finish
# (SHUTDOWN_TIMEOUT), pools close. Keep docker's stop timeout above SHUTDOWN_TIMEOUT.
STOPSIGNAL SIGTERM
ENTRYPOINT ["arena-realtime"]
CMD ["serve"]
