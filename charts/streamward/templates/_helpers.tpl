{{/*
The chart name, or nameOverride.
*/}}
{{- define "streamward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else the release name when it already
contains the chart name (release `streamward` gives `streamward`), else `<release>-<chart>`.
Truncated so that `<fullname>-collector-headless` still fits a DNS label.
*/}}
{{- define "streamward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 42 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 42 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`name-version` of the chart, for the helm.sh/chart label.
*/}}
{{- define "streamward.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every object. Call with (dict "context" $ "component" "operator").
*/}}
{{- define "streamward.labels" -}}
helm.sh/chart: {{ include "streamward.chart" .context }}
{{ include "streamward.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: streamward
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The labels a component's selectors use (never change after install: selectors are immutable).
*/}}
{{- define "streamward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamward.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Object names.
*/}}
{{- define "streamward.operator.fullname" -}}
{{- printf "%s-operator" (include "streamward.fullname" .) }}
{{- end }}

{{- define "streamward.operator.serviceAccountName" -}}
{{- default (include "streamward.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{- define "streamward.webhook.serviceName" -}}
{{- printf "%s-webhook" (include "streamward.fullname" .) }}
{{- end }}

{{/*
The operator keeps its webhook certificate in this Secret; the name is fixed in the operator.
*/}}
{{- define "streamward.webhook.secretName" -}}
streamward-webhook-tls
{{- end }}

{{/*
The leader-election Lease of the operator replicas.
*/}}
{{- define "streamward.operator.leaseName" -}}
{{- include "streamward.operator.fullname" . }}
{{- end }}

{{- define "streamward.collector.fullname" -}}
{{- printf "%s-collector" (include "streamward.fullname" .) }}
{{- end }}

{{- define "streamward.collector.serviceAccountName" -}}
{{- default (include "streamward.collector.fullname" .) .Values.collector.serviceAccount.name }}
{{- end }}

{{- define "streamward.collector.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "streamward.collector.fullname" .)) .Values.collector.tls.secretName }}
{{- end }}

{{/*
Where injected proxies send audit events: the chart's collector Service, or
collector.externalUrl when the chart's collector is off.
*/}}
{{- define "streamward.collector.url" -}}
{{- if .Values.collector.enabled }}
{{- printf "https://%s.%s.svc:%v" (include "streamward.collector.fullname" .) .Release.Namespace .Values.collector.port }}
{{- else }}
{{- required "collector.externalUrl is required when collector.enabled is false and injection.audit.enabled is true" .Values.collector.externalUrl }}
{{- end }}
{{- end }}

{{/*
Images: the operator's tag defaults to appVersion; the proxy's and collector's to image.tag,
then appVersion, so `--set image.tag=X` moves all three.
*/}}
{{- define "streamward.operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "streamward.proxy.image" -}}
{{- printf "%s:%s" .Values.proxy.image.repository (.Values.proxy.image.tag | default .Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "streamward.collector.image" -}}
{{- printf "%s:%s" .Values.collector.image.repository (.Values.collector.image.tag | default .Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
