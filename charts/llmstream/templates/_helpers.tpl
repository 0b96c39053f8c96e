{{/* Names and labels shared by every template. */}}

{{- define "llmstream.fullname" -}}
{{- if contains "llmstream" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-llmstream-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "llmstream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "llmstream.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "llmstream.selectorLabels" -}}
app.kubernetes.io/name: llmstream
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "llmstream.labels" -}}
{{ include "llmstream.selectorLabels" . }}
app.kubernetes.io/part-of: llmstream
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* <imageRegistry>/<repository>:<tag, default appVersion>; an empty imageRegistry: the repository as is. */}}
{{- define "llmstream.image" -}}
{{- $repository := .image.repository -}}
{{- with .root.Values.imageRegistry -}}
{{- $repository = printf "%s/%s" . $repository -}}
{{- end -}}
{{- printf "%s:%s" $repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* The namespaces the operator watches; empty in cluster scope. */}}
{{- define "llmstream.watchNamespaces" -}}
{{- if eq .Values.operator.scope "namespace" -}}
{{- if .Values.operator.watchNamespaces -}}
{{- join "," .Values.operator.watchNamespaces -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The operator's rules, read from files/operator-clusterrole.yaml: a byte-equal copy of
operator/rbac/clusterrole.yaml (the single source, checked by a test). `part` selects:
all (cluster scope), namespaced (the Role of namespace scope: a Role cannot grant
cluster-scoped resources), or clusterScoped (the read-only namespace/CRD scanning rules that
namespace scope keeps in a small ClusterRole so kopf can notice the CRD).
*/}}
{{- define "llmstream.rules" -}}
{{- $source := .Files.Get "files/operator-clusterrole.yaml" | fromYaml -}}
{{- $clusterScoped := list "namespaces" "customresourcedefinitions" -}}
{{- $rules := list -}}
{{- range $source.rules -}}
{{- $scoped := false -}}
{{- range .resources -}}
{{- if has . $clusterScoped -}}{{- $scoped = true -}}{{- end -}}
{{- end -}}
{{- if or (eq $.part "all") (and (eq $.part "namespaced") (not $scoped)) (and (eq $.part "clusterScoped") $scoped) -}}
{{- $rules = append $rules . -}}
{{- end -}}
{{- end -}}
{{- toYaml $rules -}}
{{- end -}}

{{- define "llmstream.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "llmstream.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
