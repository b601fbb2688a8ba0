# The one image of shoprec: every service of docker-compose.yaml that runs shoprec's code (Airflow's api-server,
# scheduler, dag-processor, triggerer and Celery workers, the Feast feature server, the recommendation service) runs
# this image, so they all run the same code and the same pinned libraries. No HEALTHCHECK here: each service's
# check lives in docker-compose.yaml. No secret is baked in: everything secret comes from the environment at run time.
#
# requirements.lock pins torch==2.13.0+cpu, a wheel that PyTorch publishes on its own CPU index, not on the
# default one: pass that index (the CPU URL of PyTorch's install page) as the build argument PIP_EXTRA_INDEX_URL,
# or PIP_INDEX_URL for a mirror that holds every wheel of the lock.
FROM python:3.11-slim

ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SHOPREC_HOME=/var/lib/shoprec \
    AIRFLOW_HOME=/home/shoprec/airflow

# libgomp1: OpenMP for faiss and implicit; tini: the init every container runs as PID 1 (signals, zombies).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

# The libraries first (their layer survives code changes), exactly as `make install`: the lock, then the project.
# The venv belongs to root: the services can run the code but not change it.
COPY requirements.lock /opt/shoprec/requirements.lock
COPY deploy/requirements-celery.txt /opt/shoprec/deploy/requirements-celery.txt
# An empty index argument would reach pip as an empty URL: unset it instead.
RUN [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    if [ -z "${PIP_INDEX_URL:-}${PIP_EXTRA_INDEX_URL:-}" ]; then \
      echo "requirements.lock pins torch==2.13.0+cpu: build with --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index>" >&2; \
      exit 1; \
    fi \
 && python -m venv "$VIRTUAL_ENV" \
 && pip install --quiet -r /opt/shoprec/requirements.lock \
 && pip install --quiet -c /opt/shoprec/requirements.lock -r /opt/shoprec/deploy/requirements-celery.txt

WORKDIR /opt/shoprec
COPY . /opt/shoprec
# Editable, as `make install`: the project root stays /opt/shoprec (the Feast repo, the DAGs, the service's import
# root are found from there). Compiled bytecode halves the start-up of every process.
RUN pip install --quiet --no-deps --no-build-isolation -e . \
 && python -m compileall -q -j 0 /opt/venv/lib /opt/shoprec > /dev/null

# A non-root user owns the state only: SHOPREC_HOME (the lake, the feature tables, the model store; a volume in
# docker-compose.yaml) and Airflow's logs (shared by the Airflow services).
RUN useradd --create-home --uid 10001 --user-group shoprec \
 && mkdir -p "$SHOPREC_HOME" /var/log/airflow "$AIRFLOW_HOME" \
 && chown -R shoprec:shoprec "$SHOPREC_HOME" /var/log/airflow "$AIRFLOW_HOME"
USER shoprec

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["shoprec", "--help"]
