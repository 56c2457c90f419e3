#!/bin/sh
# Creates the secret files that docker-compose.yml reads, in
# deploy/compose/secrets/ (ignored by git). A file that exists is kept:
#   postgres-password  random password of the bootstrap PostgreSQL. The
#                      PostgreSQL volume keeps the password it was created with,
#                      so replacing this file alone locks Temporal out.
#   codec-keys.json    the worker's payload encryption key ring, made with
#                      `python -m deployer.codec generate`. Losing it makes every
#                      payload stored in Temporal unreadable.
#
# Run from anywhere. PYTHON names the interpreter that has the deployer's
# dependencies installed (default: the repository's .venv, else python3).
set -eu

compose_dir=$(cd "$(dirname "$0")" && pwd)
repo_root=$(cd "$compose_dir/../.." && pwd)
secrets_dir=$compose_dir/secrets
password_file=$secrets_dir/postgres-password
codec_keys_file=$secrets_dir/codec-keys.json

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$repo_root/.venv/bin/python" ]; then
    PYTHON=$repo_root/.venv/bin/python
  else
    PYTHON=python3
  fi
fi

# The folder keeps other users of the host out.
mkdir -p "$secrets_dir"
chmod 0700 "$secrets_dir"

if [ -s "$password_file" ]; then
  echo "kept $password_file"
else
  # 32 random bytes as 64 hex digits, so no character needs quoting anywhere.
  (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$password_file")
  echo "wrote $password_file"
fi
# PostgreSQL reads the file as root, but the Temporal server and admin-tools
# containers read it as uid 1000, and Compose bind-mounts it with its host owner
# and mode. The 0700 folder above is what keeps it private on the host.
chmod 0644 "$password_file"

if [ -s "$codec_keys_file" ]; then
  echo "kept $codec_keys_file"
elif (cd "$repo_root" && "$PYTHON" -m deployer.codec generate "$codec_keys_file"); then
  echo "wrote $codec_keys_file"
else
  echo "error: could not generate $codec_keys_file with $PYTHON; install the deployer (make venv) or set PYTHON to an interpreter that has it" >&2
  exit 1
fi
