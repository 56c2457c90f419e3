#!/bin/sh
# Entrypoint of the `temporal` service in docker-compose.yml. The server reads
# its database password only from POSTGRES_PWD, so this script loads it from the
# compose secret and then runs the image's own entrypoint. The password never
# appears in docker-compose.yml or in `docker inspect`.
set -eu

password_file=/run/secrets/postgres_password
if [ ! -r "$password_file" ]; then
  echo "error: $password_file is missing or unreadable; run deploy/compose/init-secrets.sh on the host" >&2
  exit 1
fi
POSTGRES_PWD=$(cat "$password_file")
export POSTGRES_PWD

exec /etc/temporal/entrypoint.sh "$@"
