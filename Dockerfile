# One image for every Setpoint process: scheduler, worker and migrations (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p setpoint models worker scheduler controllers \
    && touch setpoint/__init__.py models/__init__.py worker/__init__.py scheduler/__init__.py controllers/__init__.py \
    && pip install . && pip uninstall -y setpoint

COPY . .
RUN pip install --no-deps -e . && useradd --create-home --uid 10001 setpoint
USER setpoint
