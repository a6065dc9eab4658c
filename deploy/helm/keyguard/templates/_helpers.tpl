{{- define "keyguard.labels" -}}
app.kubernetes.io/part-of: keyguard
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "keyguard.agent.name" -}}{{ .Release.Name }}-agent{{- end -}}
{{- define "keyguard.collector.name" -}}{{ .Release.Name }}-collector{{- end -}}

{{- define "keyguard.agent.selector" -}}
app.kubernetes.io/name: keyguard-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "keyguard.collector.selector" -}}
app.kubernetes.io/name: keyguard-collector
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* image: repository:tag, tag defaulting to the chart's appVersion (the package version) made into a
Docker tag as deploy/oci does: '+' -> '_', '~' -> '-'. */}}
{{- define "keyguard.image" -}}
{{- $img := index . 0 -}}{{- $root := index . 1 -}}
{{ $img.repository }}:{{ $img.tag | default ($root.Chart.AppVersion | replace "+" "_" | replace "~" "-") }}
{{- end -}}

{{/* The agent's collector address: explicit, else this chart's collector Service, else none. */}}
{{- define "keyguard.agent.collectorAddress" -}}
{{- if .Values.agent.collector.address -}}
{{ .Values.agent.collector.address }}
{{- else if .Values.collector.enabled -}}
{{ include "keyguard.collector.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.collector.service.port }}
{{- end -}}
{{- end -}}

{{- define "keyguard.collector.sqlite" -}}
{{- if not .Values.collector.database.dsnSecret.name -}}true{{- end -}}
{{- end -}}

{{/* The collector's enrollment address for agents: agent.enroll.url, else this chart's collector Service. */}}
{{- define "keyguard.agent.enrollURL" -}}
{{- if .Values.agent.enroll.url -}}
{{ .Values.agent.enroll.url }}
{{- else if and .Values.collector.enabled .Values.collector.enroll.enabled -}}
https://{{ include "keyguard.collector.name" . }}.{{ .Release.Namespace }}.svc:{{ .Values.collector.enroll.port }}
{{- end -}}
{{- end -}}
