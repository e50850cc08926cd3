{{/*
Names and labels.
*/}}
{{- define "cdc-invalidator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name is also the StatefulSet's name, and a pod's name is
`<full name>-<ordinal>`: kept to 52 characters so that the pod name stays
within 63 and the controller-revision-hash label fits too.
*/}}
{{- define "cdc-invalidator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "cdc-invalidator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cdc-invalidator.labels" -}}
helm.sh/chart: {{ include "cdc-invalidator.chart" . }}
{{ include "cdc-invalidator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The daemon's pods; the auditor's add component=auditor to theirs. */}}
{{- define "cdc-invalidator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cdc-invalidator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "cdc-invalidator.daemonSelectorLabels" -}}
{{ include "cdc-invalidator.selectorLabels" . }}
app.kubernetes.io/component: daemon
{{- end }}

{{- define "cdc-invalidator.auditorSelectorLabels" -}}
{{ include "cdc-invalidator.selectorLabels" . }}
app.kubernetes.io/component: auditor
{{- end }}

{{- define "cdc-invalidator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cdc-invalidator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cdc-invalidator.headlessServiceName" -}}
{{- printf "%s-headless" (include "cdc-invalidator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cdc-invalidator.configMapName" -}}
{{- default (include "cdc-invalidator.fullname" .) .Values.config.existingConfigMap }}
{{- end }}

{{- define "cdc-invalidator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The daemon's shutdown budget in seconds: on SIGTERM it applies what it took
(at most SHUTDOWN_DRAIN_TIMEOUT, 20 s) and commits (at most
SHUTDOWN_COMMIT_TIMEOUT, 5 s), both in src/pipeline/mod.rs; leaving the
group (CDC_LEAVE_GROUP_ON_STOP) takes what those two left, never more.
scripts/check-chart fails when these numbers and the daemon's differ.
*/}}
{{- define "cdc-invalidator.shutdownDrainSeconds" -}}20{{- end }}
{{- define "cdc-invalidator.shutdownCommitSeconds" -}}5{{- end }}

{{/* Grace period: the budget plus a margin for the process to exit. */}}
{{- define "cdc-invalidator.terminationGracePeriodSeconds" -}}
{{- $budget := add (include "cdc-invalidator.shutdownDrainSeconds" . | atoi) (include "cdc-invalidator.shutdownCommitSeconds" . | atoi) }}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds }}
{{- add $budget .Values.shutdownGraceMarginSeconds }}
{{- else }}
{{- if lt (int .Values.terminationGracePeriodSeconds) (int $budget) }}
{{- fail (printf "terminationGracePeriodSeconds %v is shorter than the daemon's shutdown budget (%d s: the final apply and commit); the kubelet would kill it mid-commit" .Values.terminationGracePeriodSeconds $budget) }}
{{- end }}
{{- .Values.terminationGracePeriodSeconds }}
{{- end }}
{{- end }}

{{/* Whether the replicas are static group members. */}}
{{- define "cdc-invalidator.staticMembership" -}}
{{- if and (eq .Values.workload "StatefulSet") .Values.staticMembership.enabled }}true{{- end }}
{{- end }}

{{/*
Environment variables the chart sets itself: extraEnv and secretEnv may not
set them (a second definition would silently win or lose).
*/}}
{{- define "cdc-invalidator.chartOwnedEnv" -}}
{{- list "CDC_ADMIN_LISTEN" "CDC_INSTANCE_ID" "CDC_LEAVE_GROUP_ON_STOP" "CDC_KAFKA_BROKERS" "CDC_KAFKA_GROUP" "CDC_GROUP_PROTOCOL" "CDC_LOG" "POD_NAME" | toJson }}
{{- end }}

{{/* Variables that can carry credentials: only from a Secret (secretEnv). */}}
{{- define "cdc-invalidator.credentialEnv" -}}
{{- list "CDC_REDIS_URL" "CDC_REDIS_PASSWORD" "CDC_REDIS_SENTINEL_PASSWORD" "CDC_KAFKA_SASL_USERNAME" "CDC_KAFKA_SASL_PASSWORD" "CDC_LOOKUP_URL" "CDC_DEAD_LETTERS_URL" "CDC_SCHEMA_REGISTRY_URL" "CDC_SCHEMA_REGISTRY_USER" "CDC_SCHEMA_REGISTRY_PASSWORD" "CDC_CONNECT_URL" | toJson }}
{{- end }}

{{/*
Checks no schema can express; each failure says what to change.
*/}}
{{- define "cdc-invalidator.validate" -}}
{{- $owned := include "cdc-invalidator.chartOwnedEnv" . | fromJsonArray }}
{{- $credentials := include "cdc-invalidator.credentialEnv" . | fromJsonArray }}
{{- range .Values.extraEnv }}
{{- if has .name $owned }}
{{- fail (printf "extraEnv: %s is set by the chart (see values admin, kafka, staticMembership, log)" .name) }}
{{- end }}
{{- if has .name $credentials }}
{{- fail (printf "extraEnv: %s can carry credentials: take it from a Secret with secretEnv" .name) }}
{{- end }}
{{- end }}
{{- range $name, $ref := .Values.secretEnv }}
{{- if has $name $owned }}
{{- fail (printf "secretEnv: %s is set by the chart" $name) }}
{{- end }}
{{- end }}
{{- $sources := 0 }}
{{- if .Values.config.existingConfigMap }}{{ $sources = add1 $sources }}{{ end }}
{{- if .Values.config.existingSecret }}{{ $sources = add1 $sources }}{{ end }}
{{- if gt $sources 1 }}
{{- fail "config.existingConfigMap and config.existingSecret: set one" }}
{{- end }}
{{- if and (eq $sources 0) (not .Values.config.toml) }}
{{- fail "config.toml is empty: give the daemon's TOML, or config.existingConfigMap / config.existingSecret" }}
{{- end }}
{{- if eq $sources 0 }}
{{- include "cdc-invalidator.refuseCredentialsInConfig" .Values.config.toml }}
{{- end }}
{{- if include "cdc-invalidator.staticMembership" . }}
{{- $consumerProtocol := eq .Values.kafka.groupProtocol "consumer" }}
{{- if and (not .Values.kafka.groupProtocol) (eq $sources 0) (regexMatch `(?m)^\s*group_protocol\s*=\s*"consumer"` .Values.config.toml) }}
{{- $consumerProtocol = true }}
{{- end }}
{{- if $consumerProtocol }}
{{- fail "static membership with group_protocol \"consumer\": a static member restarted before its session expired is refused by the broker (UNRELEASED_INSTANCE_ID, fatal; docs/reliability.md); use the classic protocol, or staticMembership.enabled=false" }}
{{- end }}
{{- end }}
{{- $partitions := int .Values.kafka.partitions }}
{{- if and (gt $partitions 0) (not .Values.autoscaling.enabled) (gt (int .Values.replicaCount) $partitions) }}
{{- fail (printf "replicaCount %v is above kafka.partitions %d: the surplus replicas get no partition and are never ready" .Values.replicaCount $partitions) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- if le $partitions 0 }}
{{- fail "autoscaling needs kafka.partitions (all subscribed topics' partitions together): the maximum must not exceed it" }}
{{- end }}
{{- if gt (int .Values.autoscaling.maxReplicas) $partitions }}
{{- fail (printf "autoscaling.maxReplicas %v is above kafka.partitions %d: the surplus replicas get no partition and are never ready" .Values.autoscaling.maxReplicas $partitions) }}
{{- end }}
{{- if gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas) }}
{{- fail "autoscaling.minReplicas is above autoscaling.maxReplicas" }}
{{- end }}
{{- if eq .Values.autoscaling.engine "keda" }}
{{- if not (.Capabilities.APIVersions.Has "keda.sh/v1alpha1/ScaledObject") }}
{{- fail "autoscaling.engine keda: the cluster serves no keda.sh/v1alpha1 ScaledObject (install KEDA, or pass --api-versions keda.sh/v1alpha1/ScaledObject to helm template)" }}
{{- end }}
{{- if or (not .Values.kafka.brokers) (not .Values.kafka.consumerGroup) }}
{{- fail "autoscaling.engine keda reads the group's lag from Kafka: set kafka.brokers and kafka.consumerGroup (the chart then passes both to the daemon too, so they cannot differ)" }}
{{- end }}
{{- if and .Values.autoscaling.keda.limitToPartitionsWithLag (not .Values.autoscaling.keda.topics) }}
{{- fail "autoscaling.keda.limitToPartitionsWithLag needs autoscaling.keda.topics (KEDA refuses it without a topic)" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuses credentials written into the TOML text: URLs with a password, the
[avro] password, librdkafka's password, secret and private-key settings.
Comments are left out first (whole-line ones, and those after a closing
quote): an example such as "redis://user:password@host" is no credential.
*/}}
{{- define "cdc-invalidator.refuseCredentialsInConfig" -}}
{{- $text := regexReplaceAll `(?m)^\s*#.*$` . "" }}
{{- $text = regexReplaceAll `(?m)"\s*#.*$` $text "\"" }}
{{- with $text }}
{{- if regexMatch `[A-Za-z][A-Za-z0-9+.-]*://[^/@\s"']*:[^/@\s"']*@` . }}
{{- fail "config.toml holds a URL with a password: move that URL to a Secret and pass it with secretEnv (e.g. CDC_REDIS_URL)" }}
{{- end }}
{{- if regexMatch `(?m)^\s*password\s*=` . }}
{{- fail "config.toml holds a password: pass it with secretEnv (CDC_SCHEMA_REGISTRY_PASSWORD, CDC_REDIS_PASSWORD)" }}
{{- end }}
{{- if regexMatch `(?m)^\s*"?sasl\.password"?\s*=` . }}
{{- fail "config.toml holds sasl.password: pass it with secretEnv (CDC_KAFKA_SASL_PASSWORD)" }}
{{- end }}
{{- if regexMatch `(?m)^\s*"?[A-Za-z0-9_.]*(password|secret|ssl\.key\.pem)[A-Za-z0-9_.]*"?\s*=` . }}
{{- fail "config.toml holds a librdkafka credential (a password, secret or private key): keep the whole file in a Secret with config.existingSecret, or mount the key file from a Secret (extraVolumes)" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Environment shared by the daemon and the auditor. Argument: dict with
"ctx" (the root context) and "role" ("daemon" or "auditor").
*/}}
{{- define "cdc-invalidator.env" -}}
{{- $ := .ctx }}
{{- $values := $.Values -}}

- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if eq .role "daemon" }}
- name: CDC_ADMIN_LISTEN
  value: {{ printf "%s:%v" $values.admin.listenAddress $values.admin.port | quote }}
{{- end }}
{{- if and (eq .role "daemon") (include "cdc-invalidator.staticMembership" $) }}
# Static membership (group.instance.id): the pod name is stable across a
# StatefulSet pod's restarts.
- name: CDC_INSTANCE_ID
  value: {{ printf "%s$(POD_NAME)" $values.staticMembership.instanceIdPrefix | quote }}
# Leave the group after the final commit on SIGTERM, so a scale-in hands the
# pod's partitions over at once (inside the shutdown budget below).
- name: CDC_LEAVE_GROUP_ON_STOP
  value: {{ ternary "true" "false" (eq $values.staticMembership.leaveGroupOnStop true) | quote }}
{{- else }}
# Not a static member: an empty id turns static membership off whatever the
# config file says.
- name: CDC_INSTANCE_ID
  value: ""
{{- end }}
{{- with $values.kafka.brokers }}
- name: CDC_KAFKA_BROKERS
  value: {{ . | quote }}
{{- end }}
{{- with $values.kafka.consumerGroup }}
- name: CDC_KAFKA_GROUP
  value: {{ . | quote }}
{{- end }}
{{- with $values.kafka.groupProtocol }}
- name: CDC_GROUP_PROTOCOL
  value: {{ . | quote }}
{{- end }}
{{- with $values.log.filter }}
- name: CDC_LOG
  value: {{ . | quote }}
{{- end }}
{{- range $name, $ref := $values.secretEnv }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name | quote }}
      key: {{ $ref.key | quote }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- with $values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "cdc-invalidator.envFrom" -}}
{{- range .Values.envFromSecrets }}
- secretRef:
    name: {{ . | quote }}
{{- end }}
{{- end }}

{{/* The config file's volume: the chart's ConfigMap, an existing one or a Secret. */}}
{{- define "cdc-invalidator.configVolume" -}}
- name: config
{{- if .Values.config.existingSecret }}
  secret:
    secretName: {{ .Values.config.existingSecret | quote }}
    items:
      - key: {{ .Values.config.key | quote }}
        path: config.toml
{{- else }}
  configMap:
    name: {{ include "cdc-invalidator.configMapName" . | quote }}
    items:
      - key: {{ if .Values.config.existingConfigMap }}{{ .Values.config.key | quote }}{{ else }}config.toml{{ end }}
        path: config.toml
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit | quote }}
{{- end }}

{{- define "cdc-invalidator.volumeMounts" -}}
- name: config
  mountPath: /etc/cdc-invalidator
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Pod annotations: the checksum of the config file the chart renders, so a
changed file rolls the pods and nothing else does (not a chart upgrade that
only relabels the ConfigMap).
*/}}
{{- define "cdc-invalidator.podAnnotations" -}}
{{- if not (or .Values.config.existingConfigMap .Values.config.existingSecret) }}
checksum/config: {{ .Values.config.toml | sha256sum }}
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Topology spread: the given list (selector filled in) or nodes and zones. */}}
{{- define "cdc-invalidator.topologySpreadConstraints" -}}
{{- $selector := dict "matchLabels" (include "cdc-invalidator.daemonSelectorLabels" . | fromYaml) }}
{{- if kindIs "invalid" .Values.topologySpreadConstraints }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    {{- toYaml $selector | nindent 4 }}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    {{- toYaml $selector | nindent 4 }}
{{- else }}
{{- range .Values.topologySpreadConstraints }}
{{- $constraint := . }}
{{- if not (hasKey $constraint "labelSelector") }}
{{- $constraint = merge (dict "labelSelector" $selector) $constraint }}
{{- end }}
- {{ toYaml $constraint | nindent 2 | trim }}
{{- end }}
{{- end }}
{{- end }}

{{/* The daemon's pod template (StatefulSet and Deployment alike). */}}
{{- define "cdc-invalidator.podTemplate" -}}
metadata:
  labels:
    {{- include "cdc-invalidator.labels" . | nindent 4 }}
    app.kubernetes.io/component: daemon
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with (include "cdc-invalidator.podAnnotations" . | trim) }}
  annotations:
    {{- . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "cdc-invalidator.serviceAccountName" . }}
  automountServiceAccountToken: false
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . | quote }}
  {{- end }}
  # The daemon's shutdown budget (final apply and commit) plus a margin.
  terminationGracePeriodSeconds: {{ include "cdc-invalidator.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: cdc-invalidator
      image: {{ include "cdc-invalidator.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - --log-format
        - {{ .Values.log.format | quote }}
        - run
        - --config
        - /etc/cdc-invalidator/config.toml
        {{- if .Values.migrateOnStart }}
        - --migrate
        {{- end }}
      env:
        {{- include "cdc-invalidator.env" (dict "ctx" . "role" "daemon") | trim | nindent 8 }}
      {{- with (include "cdc-invalidator.envFrom" . | trim) }}
      envFrom:
        {{- . | nindent 8 }}
      {{- end }}
      ports:
        - name: admin
          containerPort: {{ .Values.admin.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml .Values.probes.startup | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: admin
        {{- toYaml .Values.probes.liveness | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: admin
        {{- toYaml .Values.probes.readiness | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- include "cdc-invalidator.volumeMounts" . | nindent 8 }}
  volumes:
    {{- include "cdc-invalidator.configVolume" . | nindent 4 }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  topologySpreadConstraints:
    {{- include "cdc-invalidator.topologySpreadConstraints" . | trim | nindent 4 }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
