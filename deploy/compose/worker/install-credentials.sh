#!/bin/sh
# One-shot job of docker-compose.yml (service `worker-credentials`), run as root.
# Copies the kubeconfig and the codec key ring from the host into the named
# volumes that the worker mounts read-only, owned by the worker's uid with mode
# 0600. A bind mount cannot do this: it keeps the host file's owner and mode,
# the host files usually belong to another uid, and the worker's codec rejects a
# key ring file that group or others can access.
set -eu

uid=${WORKER_UID:?WORKER_UID must be the uid the worker runs as}
gid=${WORKER_GID:?WORKER_GID must be the gid the worker runs as}

# install_private SOURCE FOLDER NAME: copy SOURCE to FOLDER/NAME, readable only by
# the worker, replacing the copy from an earlier run.
install_private() {
  source=$1
  folder=$2
  name=$3
  if [ ! -s "$source" ]; then
    echo "error: $source is missing or empty; see docs/compose.md" >&2
    exit 1
  fi
  chown "$uid:$gid" "$folder"
  chmod 0700 "$folder"
  # The copy is private from its creation on, and the rename replaces the old
  # file in one step.
  (umask 077 && cp "$source" "$folder/.$name.new")
  chown "$uid:$gid" "$folder/.$name.new"
  mv -f "$folder/.$name.new" "$folder/$name"
  echo "installed $folder/$name for uid $uid"
}

install_private /input/kubeconfig /volumes/kube config
install_private /run/secrets/codec_keys /volumes/codec codec-keys.json
