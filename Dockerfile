# One image for every AOC process: `aoc bridge`, `aoc api`, `aoc realtime`
# (docker-compose.yml runs each as its own service) or `aoc serve` (all in one).
#
#   docker build -t aoc-tracking .
#   docker run --rm -p 5000:5000 -p 5050:5050 -e AOC_MQTT_HOST=broker aoc-tracking serve

# --- build: a virtualenv with the project and its dependencies ----------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/aoc
ENV PATH=/opt/aoc/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
# Dependencies first, from pyproject.toml alone, so a code change reuses this layer.
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY aoc ./aoc
COPY api ./api
COPY bridge ./bridge
COPY broker ./broker
COPY storage ./storage
# The simulator, for `aoc simulate` against a deployment; the services never load it.
COPY sim ./sim
RUN pip install --no-deps . && aoc --help > /dev/null

# --- dashboard: the page and its npm packages, installed from the lock file ---
FROM node:20-slim AS dashboard
WORKDIR /dashboard
COPY dashboard/package.json dashboard/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund
COPY dashboard/page.html ./
COPY dashboard/static ./static

# --- runtime: the virtualenv only, run by an unprivileged user ---------------
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 \
    PATH=/opt/aoc/bin:$PATH \
    AOC_BIND_HOST=0.0.0.0 \
    AOC_DATA_DIR=/data \
    AOC_LOG_FORMAT=json \
    AOC_DASHBOARD_DIR=/opt/aoc-dashboard
RUN useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin aoc \
    && mkdir -p /data \
    && chown aoc:aoc /data
COPY --from=build /opt/aoc /opt/aoc
COPY --from=dashboard /dashboard /opt/aoc-dashboard
USER aoc
# The embedded defaults (SQLite, image directory) write here when no MongoDB/S3 is
# configured: mount a volume at /data to keep them.
WORKDIR /data
EXPOSE 5000 5050
# The HTTP API's liveness endpoint, for `aoc serve` and `aoc api`. `aoc realtime`
# (Socket.IO port) and `aoc bridge` (no HTTP server) get their own checks in
# docker-compose.yml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('AOC_HTTP_PORT', '5000'), timeout=4)"]
ENTRYPOINT ["aoc"]
CMD ["serve"]
