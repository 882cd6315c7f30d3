# The relay as a container: `docker compose up` (with Redis), or
#   docker build -t twilio-realtime-relay . && docker run --env-file .env -p 8000:8000 twilio-realtime-relay
# Installs exactly the versions CI used (constraints.txt); runs as a non-root user.

# --- build: a virtualenv with the dependencies, then the package ------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, from pyproject.toml pinned by constraints.txt: this layer is reused as long
# as neither file changes.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt
# Then the code (see .dockerignore for what stays out).
COPY . .
RUN pip install --no-deps -c constraints.txt .

# --- runtime --------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0 \
    PORT=8000
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /app --shell /usr/sbin/nologin relay
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
USER relay
EXPOSE 8000
# No curl in the slim image: Python checks /health.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=4)"]
# `relay serve` drains active calls on SIGTERM (up to 30 s): give `docker stop` longer than that.
STOPSIGNAL SIGTERM
CMD ["relay", "serve"]
