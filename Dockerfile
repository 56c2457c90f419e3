# syntax=docker/dockerfile:1
#
# Image of the deployer worker (`python -m worker`). The runtime stage takes the
# results of two build stages and this repository's chart, nothing else:
#   tools   helm and kubectl, built from Go source at the versions in
#           tools/versions.env
#   wheels  the deployer and its dependencies as wheels
#   runtime python:3.11-slim with the binaries, the installed wheels and the
#           chart in chart/, no compilers, running as uid 10001
#
# Build: docker build -t ventros-deploy-worker .

# NOTE: the base images are pinned by tag only. In production, pin each one by
# digest as well (golang:1.26@sha256:..., python:3.11-slim@sha256:...) so that a
# rebuild cannot pick up a different image.

# ---- helm and kubectl --------------------------------------------------------
FROM golang:1.26 AS tools

# Static binaries, and the Go version of the image even when a go.mod asks for a
# newer one, as tools/build.sh sets for a local build.
ENV CGO_ENABLED=0 \
    GOFLAGS=-mod=mod \
    GOTOOLCHAIN=local \
    VENTROS_TOOLS_CACHE=/build/cache

WORKDIR /src
COPY tools/ tools/

RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    bash tools/build.sh helm

# `tools/build.sh kubernetes` also builds kube-apiserver, kube-controller-manager
# and kube-scheduler, which the worker never runs, so kubectl is built here on its
# own. The -X flags stamp the same version fields as kubernetes_ldflags() in
# tools/build.sh, so `kubectl version --client` reports KUBE_VERSION.
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    . tools/versions.env \
    && minor="${KUBE_VERSION#v1.}" \
    && minor="${minor%%.*}" \
    && ldflags="-s -w" \
    && for field in "gitVersion=${KUBE_VERSION}" "gitMajor=1" "gitMinor=${minor}" \
                    "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do \
         ldflags="${ldflags} -X k8s.io/client-go/pkg/version.${field}"; \
         ldflags="${ldflags} -X k8s.io/component-base/version.${field}"; \
       done \
    && go -C tools/kubernetes build -trimpath -ldflags "${ldflags}" \
         -o /build/bin/kubectl k8s.io/kubernetes/cmd/kubectl \
    && cp "${VENTROS_TOOLS_CACHE}/helm-${HELM_VERSION}/helm" /build/bin/helm

# ---- the deployer as wheels ----------------------------------------------------
FROM python:3.11-slim AS wheels

WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- runtime -------------------------------------------------------------------
FROM python:3.11-slim AS runtime

# Deploy requests name local charts relative to VENTROS_DEPLOY_CHART_ROOT, and
# the default request deploys "chart", the chart of this repository.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VENTROS_DEPLOY_HELM=/usr/local/bin/helm \
    VENTROS_DEPLOY_KUBECTL=/usr/local/bin/kubectl \
    VENTROS_DEPLOY_KUBECONFIG=/home/deployer/.kube/config \
    VENTROS_DEPLOY_CHART_ROOT=/opt/ventros-deploy \
    VENTROS_DEPLOY_METRICS_PORT=9464

# The .kube folder exists in the image and belongs to the worker, so that a
# kubeconfig bind-mounted into it leaves kubectl a writable cache folder beside
# it. Compose mounts a volume there instead, which hides this folder.
RUN groupadd --gid 10001 deployer \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/deployer \
         --shell /usr/sbin/nologin deployer \
    && install -d -o 10001 -g 10001 -m 0700 /home/deployer/.kube

COPY --from=tools /build/bin/helm /build/bin/kubectl /usr/local/bin/
COPY chart/ /opt/ventros-deploy/chart/

# The wheels are mounted for this step only, so they take no layer in the image.
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl

USER 10001:10001
WORKDIR /home/deployer

# The worker serves Prometheus metrics on VENTROS_DEPLOY_METRICS_PORT from its
# start, before it connects to Temporal, so an open port shows that the process
# runs. It does not show that the worker reaches Temporal or the Kubernetes API.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['VENTROS_DEPLOY_METRICS_PORT'])), timeout=3).close()"]

ENTRYPOINT ["python", "-m", "worker"]
