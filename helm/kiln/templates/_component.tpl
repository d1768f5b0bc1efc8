{{/* One Deployment for any component: identical shape, component-specific env. */}}
{{- define "kiln.deployment" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .key -}}
{{- $ctx := dict "root" $root "component" .name -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "kiln.fullname" $root }}-{{ .name }}
  labels:
    {{- include "kiln.labels" $ctx | nindent 4 }}
spec:
  {{- $autoscaled := or $v.autoscaling.enabled (and (eq .key "worker") $root.Values.keda.enabled) }}
  {{- if not $autoscaled }}
  replicas: {{ $v.replicas }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "kiln.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "kiln.labels" $ctx | nindent 8 }}
      annotations:
        checksum/secrets: {{ include (print $root.Template.BasePath "/secrets.yaml") $root | sha256sum }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $v.podSecurityContext | nindent 8 }}
      {{- if eq .key "worker" }}
      terminationGracePeriodSeconds: {{ add $root.Values.workerSettings.shutdownGraceSeconds 15 }}
      {{- else }}
      terminationGracePeriodSeconds: 30
      {{- end }}
      {{- if $v.topologySpread.enabled }}
      topologySpreadConstraints:
        - maxSkew: {{ $v.topologySpread.maxSkew }}
          topologyKey: {{ $v.topologySpread.topologyKey }}
          whenUnsatisfiable: ScheduleAnyway
          labelSelector:
            matchLabels:
              {{- include "kiln.selectorLabels" $ctx | nindent 14 }}
      {{- end }}
      containers:
        - name: {{ .name }}
          image: {{ include "kiln.image" $root }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["/usr/bin/tini", "--", "{{ .binary }}"]
          ports:
            - name: http
              containerPort: {{ $v.port }}
              protocol: TCP
          env:
            - name: KILN_HTTP__BIND
              value: "0.0.0.0:{{ $v.port }}"
            - name: KILN_LOG__FORMAT
              value: {{ $root.Values.log.format | quote }}
            - name: KILN_LOG__LEVEL
              value: {{ $root.Values.log.level | quote }}
            - name: KILN_STORAGE__ROOT
              value: {{ $root.Values.storage.mountPath | quote }}
            {{- include "kiln.secretEnv" (dict "root" $root "env" "KILN_REDIS__URL" "existing" $root.Values.redis.existingSecret "key" $root.Values.redis.existingSecretKey) | nindent 12 }}
            {{- include (printf "kiln.env.%s" .key) $root | nindent 12 }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: {{ $v.probes.startup.periodSeconds }}
            failureThreshold: {{ $v.probes.startup.failureThreshold }}
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: {{ $v.probes.liveness.periodSeconds }}
            failureThreshold: {{ $v.probes.liveness.failureThreshold }}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: {{ $v.probes.readiness.periodSeconds }}
            failureThreshold: {{ $v.probes.readiness.failureThreshold }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $v.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- if .storage }}
            - name: storage
              mountPath: {{ $root.Values.storage.mountPath }}
            {{- end }}
            {{- with $v.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            {{- if eq .key "worker" }}
            sizeLimit: {{ $root.Values.workerSettings.workspaceSizeLimit }}
            {{- else }}
            sizeLimit: 256Mi
            {{- end }}
        {{- if .storage }}
        - name: storage
          persistentVolumeClaim:
            claimName: {{ include "kiln.claimName" $root }}
        {{- end }}
        {{- with $v.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}

{{/* Component-specific environment. */}}
{{- define "kiln.env.api" -}}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_AUTH__TOKENS" "existing" .Values.auth.existingSecret "key" .Values.auth.existingSecretKey) }}
{{ include "kiln.env.secretsKey" . }}
{{- with .Values.github.publicUrl }}
- name: KILN_API__PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/* The key that seals secret values, for the api and the workers. */}}
{{- define "kiln.env.secretsKey" -}}
{{- if or .Values.secrets.key .Values.secrets.existingSecret }}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_SECRETS__KEY" "existing" .Values.secrets.existingSecret "key" .Values.secrets.existingSecretKey) }}
{{- end }}
{{- end -}}

{{- define "kiln.env.streamGateway" -}}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_AUTH__TOKENS" "existing" .Values.auth.existingSecret "key" .Values.auth.existingSecretKey) }}
{{- end -}}

{{- define "kiln.env.githubIngest" -}}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_GITHUB__WEBHOOK_SECRET" "existing" .Values.github.existingSecret "key" .Values.github.webhookSecretKey) }}
{{- if or .Values.github.token .Values.github.existingSecret }}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_GITHUB__TOKEN" "existing" .Values.github.existingSecret "key" .Values.github.tokenKey) }}
{{- end }}
- name: KILN_GITHUB__API_URL
  value: {{ .Values.github.apiUrl | quote }}
- name: KILN_GITHUB__ALLOW_FORK_PRS
  value: {{ .Values.github.allowForkPrs | quote }}
- name: KILN_GITHUB__FORK_PR_APPROVAL
  value: {{ .Values.github.forkPrApproval | quote }}
- name: KILN_GITHUB__RECONCILE_INTERVAL_SECS
  value: {{ .Values.github.reconcileIntervalSecs | quote }}
- name: KILN_GITHUB__STATUS_CONTEXT
  value: {{ .Values.github.statusContext | quote }}
{{- with .Values.github.publicUrl }}
- name: KILN_GITHUB__PUBLIC_URL
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{- define "kiln.env.esIndexer" -}}
- name: KILN_ELASTICSEARCH__URL
  value: {{ .Values.elasticsearch.url | quote }}
- name: KILN_ELASTICSEARCH__INDEX
  value: {{ .Values.elasticsearch.index | quote }}
{{- with .Values.elasticsearch.username }}
- name: KILN_ELASTICSEARCH__USERNAME
  value: {{ . | quote }}
{{ include "kiln.secretEnv" (dict "root" $ "env" "KILN_ELASTICSEARCH__PASSWORD" "existing" $.Values.elasticsearch.existingSecret "key" $.Values.elasticsearch.passwordKey) }}
{{- end }}
{{- if or .Values.elasticsearch.apiKey (and .Values.elasticsearch.existingSecret (not .Values.elasticsearch.username)) }}
{{ include "kiln.secretEnv" (dict "root" . "env" "KILN_ELASTICSEARCH__API_KEY" "existing" .Values.elasticsearch.existingSecret "key" .Values.elasticsearch.apiKeyKey) }}
{{- end }}
{{- end -}}

{{- define "kiln.env.worker" -}}
- name: KILN_WORKER__QUEUE
  value: {{ .Values.workerSettings.queue | quote }}
- name: KILN_WORKER__CONCURRENCY
  value: {{ .Values.workerSettings.concurrency | quote }}
- name: KILN_WORKER__SHUTDOWN_GRACE_SECS
  value: {{ .Values.workerSettings.shutdownGraceSeconds | quote }}
- name: KILN_WORKER__WORKSPACE_ROOT
  value: /tmp/kiln-work
{{ include "kiln.env.secretsKey" . }}
{{- end -}}
