# One image for every Setpoint process: migrate, scheduler, worker, flower and api (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Dependencies first, in a layer of their own: a change to the code does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p setpoint models worker scheduler controllers resources api \
    && for p in setpoint models worker scheduler controllers resources api; do touch "$p/__init__.py"; done \
    && pip install . && pip uninstall -y setpoint

COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 10001 setpoint \
    && mkdir -p /var/lib/setpoint /var/lib/flower \
    && chown setpoint:setpoint /var/lib/setpoint /var/lib/flower
USER setpoint
