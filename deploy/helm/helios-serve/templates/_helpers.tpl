{{/* The chart's name, at most 63 characters (a DNS label). */}}
{{- define "helios-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's objects' name: the release name, suffixed with the chart's unless it has it. */}}
{{- define "helios-serve.fullname" -}}
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

{{- define "helios-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "helios-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "helios-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "helios-serve.labels" -}}
helm.sh/chart: {{ include "helios-serve.chart" . }}
{{ include "helios-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "helios-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "helios-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "helios-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default (printf "%s-cuda" .Chart.AppVersion)) }}
{{- end }}

{{/* The Secret holding the API key, or "" when the API has no key. */}}
{{- define "helios-serve.apiKeySecretName" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecret }}
{{- else if .Values.apiKey.value }}
{{- include "helios-serve.fullname" . }}
{{- end }}
{{- end }}

{{- define "helios-serve.apiKeySecretKey" -}}
{{- if .Values.apiKey.existingSecret }}
{{- .Values.apiKey.existingSecretKey }}
{{- else }}
{{- "api-key" }}
{{- end }}
{{- end }}

{{- define "helios-serve.dataClaimName" -}}
{{- .Values.persistence.existingClaim | default (printf "%s-data" (include "helios-serve.fullname" .)) }}
{{- end }}

{{- define "helios-serve.hfCacheClaimName" -}}
{{- .Values.hfCache.persistence.existingClaim | default (printf "%s-hf-cache" (include "helios-serve.fullname" .)) }}
{{- end }}

{{/*
The Host names the server answers to besides IP addresses (it refuses others, against DNS
rebinding): the Service's in-cluster names, then server.allowedHosts.
*/}}
{{- define "helios-serve.allowedHosts" -}}
{{- $service := include "helios-serve.fullname" . }}
{{- $namespaced := printf "%s.%s" $service .Release.Namespace }}
{{- $names := list $service $namespaced (printf "%s.svc" $namespaced) (printf "%s.svc.%s" $namespaced .Values.clusterDomain) }}
{{- concat $names .Values.server.allowedHosts | uniq | join "," }}
{{- end }}

{{/* GPUs the Ray replicas reserve together, or 0 when that is left to the server. */}}
{{- define "helios-serve.rayGpus" -}}
{{- if and .Values.ray.enabled (not .Values.ray.address) (not (kindIs "invalid" .Values.ray.gpusPerReplica)) }}
{{- mulf (float64 .Values.ray.replicas) (float64 .Values.ray.gpusPerReplica) | ceil | int }}
{{- else }}
{{- 0 }}
{{- end }}
{{- end }}

{{/* The released repos of the model aliases (model_executor/checkpoint.py, MODEL_ALIASES). */}}
{{- define "helios-serve.modelRepo" -}}
{{- $aliases := dict "helios-base" "BestWishYsh/Helios-Base" "helios-mid" "BestWishYsh/Helios-Mid" "helios-distilled" "BestWishYsh/Helios-Distilled" }}
{{- .Values.modelDownload.repo | default (get $aliases .Values.model) | default .Values.model }}
{{- end }}
