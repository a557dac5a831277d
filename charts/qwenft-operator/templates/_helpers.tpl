{{/*
Shared names, labels and the operator's RBAC rules.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "qwenft-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters (the DNS label limit of some name fields).
A release name that already contains the chart name is used as is.
*/}}
{{- define "qwenft-operator.fullname" -}}
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

{{/* Chart name and version, as used by the helm.sh/chart label. */}}
{{- define "qwenft-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "qwenft-operator.labels" -}}
helm.sh/chart: {{ include "qwenft-operator.chart" . }}
{{ include "qwenft-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qwenft
{{- end }}

{{/* Labels that select the operator pod (immutable in the Deployment selector). */}}
{{- define "qwenft-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qwenft-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Name of the ServiceAccount the operator runs as. */}}
{{- define "qwenft-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "qwenft-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "qwenft-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* True (non-empty) when the operator watches every namespace. */}}
{{- define "qwenft-operator.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
The API access the operator needs in a namespace it watches: the one list of verbs and
resources, used by the per-namespace Roles and by the cluster-wide ClusterRole alike.
Pass (dict "namespaced" true) for a Role: Secrets are readable (to check that a referenced
Secret exists) only through a namespaced Role, never through a ClusterRole.
*/}}
{{- define "qwenft-operator.rules" -}}
- apiGroups: ["finetune.qwenft.io"]
  resources: ["qwenfinetunes", "qwenmodelservers"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["finetune.qwenft.io"]
  resources: ["qwenfinetunes/status", "qwenmodelservers/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch"]
{{- /* Kueue's Workloads: why a queued run's Job is not admitted yet (read only). */}}
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["get", "list", "watch"]
{{- if .namespaced }}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
{{- end }}

{{/* Cluster-scoped reads kopf needs in every mode: the CRD, for resource discovery. */}}
{{- define "qwenft-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# the GPU memory label (nvidia.com/gpu.memory) of the nodes a run targets: the GPU-fit check
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- end }}

{{/*
The full name with a suffix, still within 63 characters: (list . "suffix").
*/}}
{{- define "qwenft-operator.suffixedName" -}}
{{- $suffix := index . 1 }}
{{- $base := include "qwenft-operator.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}
