{{/* Chart name, truncated to 63 characters (a DNS label). */}}
{{- define "durable-chat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart, or the release name when it already holds the chart name. */}}
{{- define "durable-chat.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart label value: name-version */}}
{{- define "durable-chat.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "durable-chat.labels" -}}
helm.sh/chart: {{ include "durable-chat.chart" . }}
{{ include "durable-chat.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: durable-chat
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable over upgrades, never the chart version. */}}
{{- define "durable-chat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "durable-chat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per component: include "durable-chat.componentLabels" (dict "ctx" $ "component" "chat") */}}
{{- define "durable-chat.componentLabels" -}}
{{ include "durable-chat.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "durable-chat.componentSelectorLabels" -}}
{{ include "durable-chat.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "durable-chat.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "durable-chat.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "durable-chat.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Object names per component. */}}
{{- define "durable-chat.chat.fullname" -}}
{{- printf "%s-chat" (include "durable-chat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "durable-chat.history.fullname" -}}
{{- printf "%s-history" (include "durable-chat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "durable-chat.history.headless" -}}
{{- printf "%s-history-headless" (include "durable-chat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "durable-chat.rabbitmq.name" -}}
{{- default (printf "%s-rabbitmq" (include "durable-chat.fullname" .)) .Values.rabbitmq.cluster.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding AMQP_URL and the JWT keys: the user's existingSecret, or the chart's own. */}}
{{- define "durable-chat.secretName" -}}
{{- default (include "durable-chat.fullname" .) .Values.existingSecret.name }}
{{- end }}

{{/*
A settings value as an environment string. Helm reads every YAML number as float64, which prints 1000000 as
1e+06; whole numbers are printed as integers, lists are joined with commas (the services split CSV).
*/}}
{{- define "durable-chat.envValue" -}}
{{- $v := . }}
{{- if kindIs "slice" $v }}
{{- join "," $v }}
{{- else if kindIs "float64" $v }}
{{- if eq $v (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else }}
{{- $v }}
{{- end }}
{{- end }}

{{/*
Settings of one component as KEY: "value" lines: the groups it reads from .Values.config (camelCase field ->
PREFIX_UPPER_SNAKE), then what the chart decides itself (ports, URLs, paths). Usage:
include "durable-chat.settingsEnv" (dict "ctx" $ "groups" (list "amqp" "log" "chat") "extra" $dict)
*/}}
{{- define "durable-chat.settingsEnv" -}}
{{- $prefixes := dict "amqp" "AMQP_" "log" "LOG_" "chat" "CHAT_" "history" "HISTORY_" }}
{{- $all := dict }}
{{- range $group := .groups }}
{{- range $key, $value := index $.ctx.Values.config $group }}
{{- $_ := set $all (printf "%s%s" (index $prefixes $group) ($key | snakecase | upper)) (include "durable-chat.envValue" $value) }}
{{- end }}
{{- end }}
{{- range $key, $value := .extra }}
{{- $_ := set $all $key (toString $value) }}
{{- end }}
{{- range $key := keys $all | sortAlpha }}
{{ $key }}: {{ index $all $key | quote }}
{{- end }}
{{- end }}

{{/*
Every history replica's base URL in ordinal order, comma-separated: the pod's stable name under the headless
Service (`<fullname>-history-<i>.<headless>`), which the pod's DNS search path completes with its namespace and the
cluster domain, so the same string holds in any namespace (and in the Kustomize base, which has none). The headless
Service publishes not-ready pods too: a replica that is copying resolves and answers 503 not_ready.
*/}}
{{- define "durable-chat.history.replicaUrls" -}}
{{- $urls := list }}
{{- range $ordinal := until (int .Values.history.replicas) }}
{{- $urls = append $urls (printf "http://%s-%d.%s:%d" (include "durable-chat.history.fullname" $) $ordinal (include "durable-chat.history.headless" $) (int $.Values.history.port)) }}
{{- end }}
{{- join "," $urls }}
{{- end }}

{{/* Environment of the chat ConfigMap. */}}
{{- define "durable-chat.chat.env" -}}
{{- $extra := dict
  "CHAT_HOST" "0.0.0.0"
  "CHAT_PORT" .Values.chat.port
  "CHAT_METRICS_PORT" .Values.chat.metricsPort
  "CHAT_HISTORY_URL" (include "durable-chat.history.replicaUrls" .)
  "AMQP_HISTORY_REPLICAS" .Values.history.replicas
}}
{{- include "durable-chat.settingsEnv" (dict "ctx" . "groups" (list "amqp" "log" "chat") "extra" $extra) }}
{{- end }}

{{/*
Environment of the history ConfigMap. HISTORY_REPLICA is not set: each pod takes its ordinal from its own name
(HOSTNAME, `...-history-<n>`), so one ConfigMap serves every pod of the StatefulSet.
*/}}
{{- define "durable-chat.history.env" -}}
{{- $extra := dict
  "HISTORY_HOST" "0.0.0.0"
  "HISTORY_PORT" .Values.history.port
  "HISTORY_METRICS_PORT" .Values.history.metricsPort
  "HISTORY_DATA_DIR" "/data/history"
  "HISTORY_PEERS" (include "durable-chat.history.replicaUrls" .)
  "AMQP_HISTORY_REPLICAS" .Values.history.replicas
}}
{{- include "durable-chat.settingsEnv" (dict "ctx" . "groups" (list "amqp" "log" "history") "extra" $extra) }}
{{- end }}

{{/*
Secret-backed environment of a component: AMQP_URL and <PREFIX>AUTH_SECRET / <PREFIX>AUTH_PUBLIC_KEY.
With rabbitmq.cluster.enabled, AMQP_URL is built in the pod from the operator's default-user Secret by $(VAR)
expansion; the RABBITMQ_DEFAULT_USER_* variables exist only for that expansion.
*/}}
{{- define "durable-chat.secretEnv" -}}
{{- $ctx := .ctx }}
{{- $secret := include "durable-chat.secretName" $ctx }}
{{- if $ctx.Values.rabbitmq.cluster.enabled }}
{{- $userSecret := printf "%s-default-user" (include "durable-chat.rabbitmq.name" $ctx) }}
{{- range $var, $key := dict "RABBITMQ_DEFAULT_USER_USERNAME" "username" "RABBITMQ_DEFAULT_USER_PASSWORD" "password" "RABBITMQ_DEFAULT_USER_HOST" "host" "RABBITMQ_DEFAULT_USER_PORT" "port" }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $userSecret }}
      key: {{ $key }}
{{- end }}
- name: AMQP_URL
  value: {{ printf "amqp://$(RABBITMQ_DEFAULT_USER_USERNAME):$(RABBITMQ_DEFAULT_USER_PASSWORD)@$(RABBITMQ_DEFAULT_USER_HOST):$(RABBITMQ_DEFAULT_USER_PORT)/%s" ($ctx.Values.rabbitmq.cluster.vhost | urlquery) | quote }}
{{- else }}
- name: AMQP_URL
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $ctx.Values.existingSecret.amqpUrlKey }}
{{- end }}
- name: {{ .prefix }}AUTH_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $ctx.Values.existingSecret.authSecretKey }}
      optional: true
- name: {{ .prefix }}AUTH_PUBLIC_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ $ctx.Values.existingSecret.authPublicKeyKey }}
      optional: true
{{- end }}

{{/* Pod security context of the restricted Pod Security Standard; the image's user is 999. */}}
{{- define "durable-chat.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "durable-chat.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* checksum/config: rolls the pods when their settings or secret change. */}}
{{- define "durable-chat.configChecksum" -}}
{{- $files := list (include (print .ctx.Template.BasePath "/" .component "/configmap.yaml") .ctx) (include (print .ctx.Template.BasePath "/secret.yaml") .ctx) }}
{{- join "\n" $files | sha256sum }}
{{- end }}

{{/* NetworkPolicy egress shared by both components: DNS, and AMQP to the broker. */}}
{{- define "durable-chat.networkPolicy.commonEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
- ports:
    {{- range .Values.networkPolicy.brokerPorts }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- if .Values.networkPolicy.brokerTo }}
  to:
    {{- toYaml .Values.networkPolicy.brokerTo | nindent 4 }}
  {{- else if .Values.rabbitmq.cluster.enabled }}
  to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ include "durable-chat.rabbitmq.name" . }}
  {{- end }}
{{- end }}

{{/* NetworkPolicy ingress of a metrics port. Usage: include ... (dict "ctx" $ "port" 9000) */}}
{{- define "durable-chat.networkPolicy.metricsIngress" -}}
- ports:
    - port: {{ .port }}
      protocol: TCP
  from:
    {{- if .ctx.Values.networkPolicy.metricsFrom }}
    {{- toYaml .ctx.Values.networkPolicy.metricsFrom | nindent 4 }}
    {{- else }}
    - namespaceSelector: {}
    {{- end }}
{{- end }}

{{/*
API versions and fields by what the cluster serves. `helm install` sees the cluster's own API versions
(.Capabilities.APIVersions) and version; `helm template` sees Helm's current defaults unless given --kube-version
or --api-versions. Kubernetes 1.20 (the offline kind node of tests/e2e/kind) lacks policy/v1 (1.21) and
autoscaling/v2 (1.23); fields newer than the cluster are left out, since Helm validates against the server's schema.
*/}}
{{- define "durable-chat.servesApi" -}}
{{- if and (.ctx.Capabilities.APIVersions.Has .api) (semverCompare (printf ">=%s-0" .since) .ctx.Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}
{{- define "durable-chat.pdb.apiVersion" -}}
{{- if include "durable-chat.servesApi" (dict "ctx" . "api" "policy/v1" "since" "1.21") }}policy/v1{{ else }}policy/v1beta1{{ end }}
{{- end }}
{{- define "durable-chat.hpa.apiVersion" -}}
{{- if include "durable-chat.servesApi" (dict "ctx" . "api" "autoscaling/v2" "since" "1.23") }}autoscaling/v2{{ else }}autoscaling/v2beta2{{ end }}
{{- end }}
{{/* PDB unhealthyPodEvictionPolicy and StatefulSet persistentVolumeClaimRetentionPolicy: on by default from 1.27. */}}
{{- define "durable-chat.hasFieldsOf127" -}}
{{- if semverCompare ">=1.27-0" .Capabilities.KubeVersion.Version }}true{{ end }}
{{- end }}

{{/*
Scheduling of a component's pods: the user's affinity / spread constraints, else soft ones (a preferred
anti-affinity across nodes, a ScheduleAnyway spread across zones), so that replicas land apart where the cluster
allows and still schedule on one node (kind, small clusters). Usage:
include "durable-chat.scheduling" (dict "ctx" $ "component" "chat" "values" .Values.chat)
*/}}
{{- define "durable-chat.scheduling" -}}
{{- $component := dict "ctx" .ctx "component" .component }}
affinity:
  {{- if .values.affinity }}
  {{- toYaml .values.affinity | nindent 2 }}
  {{- else }}
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "durable-chat.componentSelectorLabels" $component | nindent 14 }}
  {{- end }}
topologySpreadConstraints:
  {{- if .values.topologySpreadConstraints }}
  {{- toYaml .values.topologySpreadConstraints | nindent 2 }}
  {{- else }}
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "durable-chat.componentSelectorLabels" $component | nindent 8 }}
  {{- end }}
{{- end }}

{{/*
PodDisruptionBudget of a component. Usage:
include "durable-chat.pdb" (dict "ctx" $ "component" "chat" "budget" .Values.chat.podDisruptionBudget "why" "...")
*/}}
{{- define "durable-chat.pdb" -}}
{{- $component := dict "ctx" .ctx "component" .component }}
apiVersion: {{ include "durable-chat.pdb.apiVersion" .ctx }}
kind: PodDisruptionBudget
metadata:
  name: {{ printf "%s-%s" (include "durable-chat.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
  labels:
    {{- include "durable-chat.componentLabels" $component | nindent 4 }}
spec:
  maxUnavailable: {{ .budget.maxUnavailable }}
  {{- with .budget.unhealthyPodEvictionPolicy }}
  {{- if include "durable-chat.hasFieldsOf127" $.ctx }}
  # {{ $.why }}
  unhealthyPodEvictionPolicy: {{ . }}
  {{- end }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "durable-chat.componentSelectorLabels" $component | nindent 6 }}
{{- end }}
