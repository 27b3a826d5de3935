{{/* Chart name. */}}
{{- define "tern.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; service names append "-<component>". */}}
{{- define "tern.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Container ports of each service. The containers listen on unprivileged ports
(the pods run as non-root without capabilities); the LoadBalancer Services
map the well-known ports onto them.
*/}}
{{- define "tern.ports" -}}
ingress: {smtp: 2525, submission: 2587, submissions: 2465, api: 2580, grpc: 50051, admin: 9081}
queue: {grpc: 50052, admin: 9082}
resolver: {grpc: 50053, admin: 9083}
delivery: {grpc: 50054, admin: 9084}
mailbox: {imap: 1143, imaps: 1993, pop3: 1110, pop3s: 1995, grpc: 50055, admin: 9085}
{{- end }}

{{- define "tern.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{ include "tern.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: tern
{{- end }}

{{- define "tern.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tern.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{- define "tern.image" -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* NATS URL when it is not in a Secret (empty when it is). */}}
{{- define "tern.natsUrl" -}}
{{- if .Values.nats.enabled -}}
nats://{{ .Release.Name }}-nats:4222
{{- else if .Values.externalNats.existingSecret -}}
{{- else if .Values.externalNats.url -}}
{{ .Values.externalNats.url }}
{{- else -}}
{{ fail "NATS: set nats.enabled=true, or externalNats.url / externalNats.existingSecret" }}
{{- end -}}
{{- end }}

{{- define "tern.databaseSecret" -}}
{{- if .Values.database.url -}}
{{ include "tern.fullname" . }}-database
{{- else if .Values.database.existingSecret -}}
{{ .Values.database.existingSecret }}
{{- else -}}
{{ fail "database: set database.url or database.existingSecret (the mailbox keeps its data in PostgreSQL under Kubernetes)" }}
{{- end -}}
{{- end }}

{{- define "tern.databaseSecretKey" -}}
{{- if .Values.database.url -}}url{{- else -}}{{ .Values.database.existingSecretKey }}{{- end -}}
{{- end }}

{{- define "tern.tlsSecret" -}}
{{- if .Values.tls.existingSecret -}}
{{ .Values.tls.existingSecret }}
{{- else if and .Values.tls.cert .Values.tls.key -}}
{{ include "tern.fullname" . }}-tls
{{- end -}}
{{- end }}

{{- define "tern.serviceAccountName" -}}
{{- if .ctx.Values.serviceAccount.create -}}
{{ include "tern.fullname" .ctx }}-{{ .component }}
{{- else -}}
default
{{- end -}}
{{- end }}

{{/* Is the replica count managed by an autoscaler? */}}
{{- define "tern.autoscaled" -}}
{{- $svc := index .ctx.Values .component -}}
{{- if and (eq .component "delivery") $svc.keda.enabled -}}
true
{{- else if and (hasKey $svc "autoscaling") $svc.autoscaling.enabled -}}
true
{{- end -}}
{{- end }}

{{/* The first local domain, for examples. */}}
{{- define "tern.firstDomain" -}}
{{- $d := index .Values.config "local_domains" | default "localhost" -}}
{{- if kindIs "slice" $d -}}{{ first $d }}{{- else -}}{{ first (splitList "," $d) | trim }}{{- end -}}
{{- end }}
