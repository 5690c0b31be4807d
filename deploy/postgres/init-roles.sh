#!/bin/sh
# /docker-entrypoint-initdb.d hook of the PostgreSQL image: runs init.sql in $POSTGRES_DB with
# the roles' passwords from the environment (a Kubernetes Secret / the compose .env file).
# init.sql lives outside the hook folder (the image would run it bare, without the passwords).
# Mounted executable (0755): the image runs it; a non-executable hook would be sourced instead.
set -eu
: "${GRIDLOOP_DB_PASSWORD_INTAKE:?}" "${GRIDLOOP_DB_PASSWORD_DISPATCH:?}"
: "${GRIDLOOP_DB_PASSWORD_ESCALATION:?}" "${GRIDLOOP_DB_PASSWORD_FEEDBACK:?}"
: "${GRIDLOOP_DB_PASSWORD_AUDITOR:?}"
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-gridloop}" \
    -v intake_password="$GRIDLOOP_DB_PASSWORD_INTAKE" \
    -v dispatch_password="$GRIDLOOP_DB_PASSWORD_DISPATCH" \
    -v escalation_password="$GRIDLOOP_DB_PASSWORD_ESCALATION" \
    -v feedback_password="$GRIDLOOP_DB_PASSWORD_FEEDBACK" \
    -v auditor_password="$GRIDLOOP_DB_PASSWORD_AUDITOR" \
    -f "${GRIDLOOP_INIT_SQL:-/etc/gridloop/postgres/init.sql}"
