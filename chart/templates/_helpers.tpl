{{/*
Phases in the order the deployer applies them. Every object carries one of
them in the deploy.ventros.io/phase label.
*/}}
{{- define "ventros-crm.allPhases" -}}
base data messaging cache temporal migration app
{{- end }}

{{/*
Print "true" when objects of .phase render, that is when deployer.phases is
empty or lists .phase. Every template starts with this check.
Usage: include "ventros-crm.phaseEnabled" (dict "context" $ "phase" "base")
*/}}
{{- define "ventros-crm.phaseEnabled" -}}
{{- if not (has .phase (splitList " " (include "ventros-crm.allPhases" .context))) }}
{{- fail (printf "invalid phase %q in a chart template: expected one of %s" .phase (include "ventros-crm.allPhases" .context)) }}
{{- end }}
{{- $selected := .context.Values.deployer.phases | default list }}
{{- if or (empty $selected) (has .phase $selected) -}}
true
{{- end }}
{{- end }}

{{- define "ventros-crm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name R that starts every object name: fullnameOverride, else the release
name when it contains the chart name, else "<release>-<chart name>".
R may have at most 35 characters. The RabbitMQ operator names its StatefulSet
R-rabbitmq-server, and Kubernetes needs StatefulSet names of at most 52
characters so that the pods' controller-revision-hash label fits in 63.
*/}}
{{- define "ventros-crm.fullname" -}}
{{- $fullname := "" }}
{{- if .Values.fullnameOverride }}
{{- $fullname = .Values.fullnameOverride }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- $fullname = .Release.Name }}
{{- else }}
{{- $fullname = printf "%s-%s" .Release.Name $name }}
{{- end }}
{{- end }}
{{- if gt (len $fullname) 35 }}
{{- fail (printf "full name %q has %d characters but at most 35 are allowed, so that names derived from it fit Kubernetes limits. Use a shorter release name or set fullnameOverride" $fullname (len $fullname)) }}
{{- end }}
{{- $fullname }}
{{- end }}

{{- define "ventros-crm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
App version: image.tag, else the chart's appVersion. It selects the app image
and names the migration Job.
*/}}
{{- define "ventros-crm.appVersion" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/*
App version as a label value: at most 63 characters from [A-Za-z0-9._-],
starting and ending with a letter or digit. Other characters become "_".
*/}}
{{- define "ventros-crm.versionLabel" -}}
{{- $version := regexReplaceAll "[^A-Za-z0-9._-]" (include "ventros-crm.appVersion" .) "_" }}
{{- regexReplaceAll "^[^A-Za-z0-9]+|[^A-Za-z0-9]+$" ($version | trunc 63) "" }}
{{- end }}

{{/*
Labels that select the pods of one component.
Usage: include "ventros-crm.selectorLabels" (dict "context" $ "component" "app")
*/}}
{{- define "ventros-crm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ventros-crm.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Labels of every object.
Usage: include "ventros-crm.labels" (dict "context" $ "phase" "base" "component" "config")
*/}}
{{- define "ventros-crm.labels" -}}
helm.sh/chart: {{ include "ventros-crm.chart" .context }}
{{ include "ventros-crm.selectorLabels" . }}
app.kubernetes.io/version: {{ include "ventros-crm.versionLabel" .context | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
deploy.ventros.io/phase: {{ .phase }}
{{- end }}

{{/*
Labels of a pod template: the selector labels and the phase. The app version
label is left out so that an app upgrade does not restart Redis; the app and
migration pods add it themselves.
*/}}
{{- define "ventros-crm.podLabels" -}}
{{ include "ventros-crm.selectorLabels" . }}
deploy.ventros.io/phase: {{ .phase }}
{{- end }}

{{/*
Helm hook annotations, printed only when deployer.legacyHooks is true.
Usage: include "ventros-crm.hookAnnotations" (dict "context" $ "weight" "-10")
*/}}
{{- define "ventros-crm.hookAnnotations" -}}
{{- if .context.Values.deployer.legacyHooks }}
helm.sh/hook: post-install,post-upgrade
helm.sh/hook-weight: {{ .weight | quote }}
helm.sh/hook-delete-policy: before-hook-creation
{{- end }}
{{- end }}

{{- define "ventros-crm.configMapName" -}}
{{- printf "%s-config" (include "ventros-crm.fullname" .) }}
{{- end }}

{{/*
Secret with keys app-secret-key and redis-password: secrets.existingSecret,
else R-secrets.
*/}}
{{- define "ventros-crm.secretName" -}}
{{- default (printf "%s-secrets" (include "ventros-crm.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/*
A digest of the secret values given in the values, on the pod templates that
read them, so that changing one rolls the pods; without it they would keep
the old value until they restart. It covers the given values and the name of
an existing Secret, not a change made inside that Secret. The deployer passes
a keyed digest in deployer.secretsDigest. Without it the chart takes a plain
SHA-256, salted with the fullname, and 16 hex digits are enough to notice a
change.
*/}}
{{- define "ventros-crm.secretsDigest" -}}
{{- if .Values.deployer.secretsDigest }}
{{- .Values.deployer.secretsDigest }}
{{- else }}
{{- $given := list (include "ventros-crm.fullname" .) (include "ventros-crm.secretName" .) (toString (.Values.secrets.appSecretKey | default "")) (toString (.Values.secrets.redisPassword | default "")) }}
{{- join "\n" $given | sha256sum | trunc 16 }}
{{- end }}
{{- end }}

{{/*
Name of the Zalando PostgreSQL cluster, which is also the name of its primary
Service. The operator rejects a cluster whose name does not start with
"<teamId>-", so rendering fails early instead.
*/}}
{{- define "ventros-crm.postgresqlName" -}}
{{- $name := printf "%s-db" (include "ventros-crm.fullname" .) }}
{{- $teamId := .Values.postgresql.teamId }}
{{- if not (hasPrefix (printf "%s-" (lower $teamId)) $name) }}
{{- fail (printf "invalid postgresql.teamId %q: the Zalando postgres-operator requires the cluster name %q to start with \"%s-\". Set postgresql.teamId to the first part of the name, or change the release name or fullnameOverride" $teamId $name (lower $teamId)) }}
{{- end }}
{{- $name }}
{{- end }}

{{/*
Secret that the Zalando operator creates for a database user, with keys
username and password.
Usage: include "ventros-crm.postgresqlUserSecret" (dict "context" $ "user" "ventros")
*/}}
{{- define "ventros-crm.postgresqlUserSecret" -}}
{{- printf "%s.%s.credentials.postgresql.acid.zalan.do" .user (include "ventros-crm.postgresqlName" .context) }}
{{- end }}

{{/*
Name of the RabbitmqCluster. The operator creates a Service of the same name
(port 5672) and the Secret "<name>-default-user" with keys username and
password.
*/}}
{{- define "ventros-crm.rabbitmqName" -}}
{{- printf "%s-rabbitmq" (include "ventros-crm.fullname" .) }}
{{- end }}

{{- define "ventros-crm.redisName" -}}
{{- printf "%s-redis" (include "ventros-crm.fullname" .) }}
{{- end }}

{{/*
host:port of the app's Temporal frontend: temporal.address, else the
frontend Service of the app's own Temporal release in the release namespace.
*/}}
{{- /*
The deployer installs the app's Temporal as release R-temporal, and the
Temporal chart names its objects after a release whose name contains
"temporal" without adding its own name, so its frontend Service is
R-temporal-frontend whatever this chart's fullname is.
*/}}
{{- define "ventros-crm.temporalAddress" -}}
{{- $default := printf "%s-temporal-frontend.%s:7233" .Release.Name .Release.Namespace }}
{{- default $default .Values.temporal.address }}
{{- end }}

{{- define "ventros-crm.temporalHost" -}}
{{- regexReplaceAll ":[0-9]+$" (include "ventros-crm.temporalAddress" .) "" }}
{{- end }}

{{- define "ventros-crm.temporalPort" -}}
{{- regexFind "[0-9]+$" (include "ventros-crm.temporalAddress" .) }}
{{- end }}

{{/*
Name of the migration Job: R-migrate-<app version>, with the version turned
into a DNS-1123 label (lowercase, other characters become "-"). A version too
long for the 63-character limit is cut and gets the first 8 hex digits of its
SHA-256, so that two long versions still give two Jobs.
*/}}
{{- define "ventros-crm.migrationJobName" -}}
{{- $prefix := printf "%s-migrate-" (include "ventros-crm.fullname" .) }}
{{- $version := include "ventros-crm.appVersion" . }}
{{- $slug := regexReplaceAll "[^a-z0-9-]" (lower $version) "-" }}
{{- $room := int (sub 63 (len $prefix)) }}
{{- if gt (len $slug) $room }}
{{- $slug = printf "%s-%s" (trunc (int (sub $room 9)) $slug) (sha256sum $version | trunc 8) }}
{{- end }}
{{- regexReplaceAll "-+$" (printf "%s%s" $prefix $slug) "" }}
{{- end }}

{{/*
Init container that waits until host:port accepts TCP connections, for at
most .seconds, and fails the pod after that. The values reach the script
through env vars, so none of them is parsed by the shell.
Usage: include "ventros-crm.waitContainer" (dict "context" $ "name" "wait-for-redis"
  "target" "Redis" "host" "r-redis" "port" 6379 "seconds" 120)
*/}}
{{- define "ventros-crm.waitContainer" -}}
- name: {{ .name }}
  image: {{ .context.Values.waitImage | quote }}
  imagePullPolicy: {{ .context.Values.image.pullPolicy }}
  env:
    - name: WAIT_TARGET
      value: {{ .target | quote }}
    - name: WAIT_HOST
      value: {{ .host | quote }}
    - name: WAIT_PORT
      value: {{ .port | quote }}
    - name: WAIT_SECONDS
      value: {{ .seconds | quote }}
  command:
    - sh
    - -c
    - |
      echo "Waiting up to ${WAIT_SECONDS}s for ${WAIT_TARGET} at ${WAIT_HOST}:${WAIT_PORT}"
      if timeout "$WAIT_SECONDS" sh -c 'until nc -z -w 2 "$WAIT_HOST" "$WAIT_PORT"; do sleep 2; done'; then
        echo "${WAIT_TARGET} at ${WAIT_HOST}:${WAIT_PORT} accepts connections"
      else
        echo "Timed out after ${WAIT_SECONDS}s waiting for ${WAIT_TARGET} at ${WAIT_HOST}:${WAIT_PORT}" >&2
        exit 1
      fi
{{- end }}
