{{/* Names, labels and shared fragments. */}}

{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kiln.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kiln.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The components, in the order they render: values key, kebab name, binary, whether
     they mount the shared storage. */}}
{{- define "kiln.components" -}}
api: {name: api, binary: kiln-api, storage: true}
streamGateway: {name: stream-gateway, binary: kiln-stream-gateway, storage: true}
githubIngest: {name: github-ingest, binary: kiln-github-ingest, storage: true}
esIndexer: {name: es-indexer, binary: kiln-es-indexer, storage: false}
worker: {name: worker, binary: kiln-worker, storage: true}
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "kiln.labels" -}}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "kiln.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{- printf "%s/%s@%s" $i.registry $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s/%s:%s" $i.registry $i.repository (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end -}}

{{- define "kiln.secretName" -}}
{{- printf "%s-secrets" (include "kiln.fullname" .) -}}
{{- end -}}

{{- define "kiln.claimName" -}}
{{- default (printf "%s-storage" (include "kiln.fullname" .)) .Values.storage.existingClaim -}}
{{- end -}}

{{/* An env var read from an existing Secret, or from the chart's own. */}}
{{- define "kiln.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ default (include "kiln.secretName" .root) .existing }}
      key: {{ .key }}
{{- end -}}

{{/* Checks that fail the render with a message naming the value. */}}
{{- define "kiln.validate" -}}
{{- if not (or .Values.redis.url .Values.redis.existingSecret) -}}
{{- fail "redis.url or redis.existingSecret is required" -}}
{{- end -}}
{{- if and (or .Values.api.enabled .Values.streamGateway.enabled) (not (or .Values.auth.tokens .Values.auth.existingSecret)) -}}
{{- fail "auth.tokens or auth.existingSecret is required: the api and the stream gateway refuse to run without tokens" -}}
{{- end -}}
{{- if and .Values.githubIngest.enabled (not (or .Values.github.webhookSecret .Values.github.existingSecret)) -}}
{{- fail "github.webhookSecret or github.existingSecret is required when githubIngest.enabled" -}}
{{- end -}}
{{- if and .Values.esIndexer.enabled (not .Values.elasticsearch.url) -}}
{{- fail "elasticsearch.url is required when esIndexer.enabled" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not (kindIs "invalid" .Values.worker.replicas)) -}}
{{- fail "worker.replicas must be null when keda.enabled: KEDA owns the worker count (set worker.replicas: null)" -}}
{{- end -}}
{{- if and .Values.keda.enabled (not .Values.keda.address) -}}
{{- fail "keda.address (Redis host:port) is required when keda.enabled" -}}
{{- end -}}
{{- if and .Values.keda.enabled .Values.worker.autoscaling.enabled -}}
{{- fail "use either keda.enabled or worker.autoscaling.enabled, not both" -}}
{{- end -}}
{{- end -}}
