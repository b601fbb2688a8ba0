#!/usr/bin/env bash
# Runs once, when the postgres service starts on an empty data volume (docker-entrypoint-initdb.d): one role and one
# database each for Airflow's metadata and Feast's SQL registry, passwords from the environment. Changing a
# password later is an ALTER ROLE (the volume keeps the first ones), not an edit here.
set -euo pipefail
: "${AIRFLOW_DB_PASSWORD:?AIRFLOW_DB_PASSWORD is not set}"
: "${FEAST_DB_PASSWORD:?FEAST_DB_PASSWORD is not set}"

# psql's :'var' quotes the values as SQL literals; they never pass through the shell or the log.
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
  -v airflow_password="$AIRFLOW_DB_PASSWORD" -v feast_password="$FEAST_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_password';
CREATE DATABASE airflow OWNER airflow;
CREATE ROLE feast LOGIN PASSWORD :'feast_password';
CREATE DATABASE feast OWNER feast;
SQL
