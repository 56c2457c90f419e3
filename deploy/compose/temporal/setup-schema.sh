#!/bin/sh
# One-shot job of docker-compose.yml (service `temporal-schema`, image
# temporalio/admin-tools). Creates the Temporal databases in PostgreSQL if they
# are missing and applies every schema version the image ships. Each step is
# idempotent, so the job runs on every `docker compose up` and upgrades the
# schema after a Temporal version bump.
set -eu

password_file=/run/secrets/postgres_password
if [ ! -r "$password_file" ]; then
  echo "error: $password_file is missing or unreadable; run deploy/compose/init-secrets.sh on the host" >&2
  exit 1
fi
# temporal-sql-tool reads the password from SQL_PASSWORD, which keeps it out of
# the process list.
SQL_PASSWORD=$(cat "$password_file")
export SQL_PASSWORD

host=${SQL_HOST:?SQL_HOST must name the PostgreSQL host}
port=${SQL_PORT:-5432}
user=${SQL_USER:?SQL_USER must name the PostgreSQL user}
schema_root=/etc/temporal/schema/postgresql/v12

# setup_database NAME SCHEMA: create database NAME and bring it to the newest
# version of the schema in $schema_root/SCHEMA/versioned.
setup_database() {
  name=$1
  schema=$2
  set -- --plugin postgres12 --ep "$host" -p "$port" -u "$user" --db "$name"
  echo "database $name: creating if missing"
  temporal-sql-tool "$@" create
  echo "database $name: applying schema $schema"
  temporal-sql-tool "$@" setup-schema -v 0.0
  temporal-sql-tool "$@" update-schema -d "$schema_root/$schema/versioned"
}

setup_database "${SQL_DATABASE:-temporal}" temporal
setup_database "${SQL_VISIBILITY_DATABASE:-temporal_visibility}" visibility
echo "Temporal schema is up to date"
