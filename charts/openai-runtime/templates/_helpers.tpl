{{/*
Names. With the release called "openai-runtime" (the recommended name) every
object is named exactly as in the kustomize base deploy/base/:
  <fullname>-operator      Deployment, ServiceAccount, ClusterRole(Binding), PDB
  <fullname>-webhook       the webhook Service (and the cert-manager Certificate)
  <fullname>               the MutatingWebhookConfiguration and the kopf peering
  <fullname>-webhook-tls   the self-signed certificate's Secret and its Role
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "openai-runtime.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base of every object name. Truncated to 52 characters so that the longest
suffix ("-operator", "-webhook", "-metrics") still gives a valid 63-character
Service or label value.
*/}}
{{- define "openai-runtime.fullname" -}}
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

{{/* helm.sh/chart: name-version. */}}
{{- define "openai-runtime.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries, without the component. */}}
{{- define "openai-runtime.commonLabels" -}}
helm.sh/chart: {{ include "openai-runtime.chart" . }}
app.kubernetes.io/name: {{ include "openai-runtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "openai-runtime.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openai-runtime
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "openai-runtime.labels" -}}
{{ include "openai-runtime.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator pods' selector (immutable in a Deployment: never change it). */}}
{{- define "openai-runtime.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openai-runtime.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The application version: image.tag, else the chart's appVersion. */}}
{{- define "openai-runtime.version" -}}
{{- .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "openai-runtime.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "openai-runtime.operatorName" -}}
{{- printf "%s-operator" (include "openai-runtime.fullname" .) }}
{{- end }}

{{- define "openai-runtime.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "openai-runtime.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "openai-runtime.webhookServiceName" -}}
{{- printf "%s-webhook" (include "openai-runtime.fullname" .) }}
{{- end }}

{{- define "openai-runtime.metricsServiceName" -}}
{{- printf "%s-metrics" (include "openai-runtime.fullname" .) }}
{{- end }}

{{/* The MutatingWebhookConfiguration (cluster-scoped). */}}
{{- define "openai-runtime.webhookConfigurationName" -}}
{{- include "openai-runtime.fullname" . }}
{{- end }}

{{/* The (Cluster)KopfPeering the replicas share: --peering-name. */}}
{{- define "openai-runtime.peeringName" -}}
{{- include "openai-runtime.fullname" . }}
{{- end }}

{{/* The cert-manager Certificate (certManager mode). */}}
{{- define "openai-runtime.certificateName" -}}
{{- printf "%s-webhook" (include "openai-runtime.fullname" .) }}
{{- end }}

{{/* The cert-manager Issuer the chart creates (certManager mode, no issuerRef). */}}
{{- define "openai-runtime.issuerName" -}}
{{- printf "%s-selfsigned" (include "openai-runtime.fullname" .) }}
{{- end }}

{{/*
The Secret holding the webhook's certificate, per webhook.tls.mode:
  selfSigned   <fullname>-webhook-tls, created and renewed by the operator
  certManager  <fullname>-webhook-cert, issued by cert-manager
  secret       webhook.tls.secretName, supplied by the user
*/}}
{{- define "openai-runtime.tlsSecretName" -}}
{{- $mode := .Values.webhook.tls.mode }}
{{- if eq $mode "selfSigned" }}
{{- printf "%s-webhook-tls" (include "openai-runtime.fullname" .) }}
{{- else if eq $mode "certManager" }}
{{- printf "%s-webhook-cert" (include "openai-runtime.fullname" .) }}
{{- else if eq $mode "secret" }}
{{- include "openai-runtime.checkTlsSecret" . }}
{{- .Values.webhook.tls.secretName }}
{{- else }}
{{- fail (printf "webhook.tls.mode must be selfSigned, certManager or secret, not %q" $mode) }}
{{- end }}
{{- end }}

{{/* webhook.tls.mode=secret: both the Secret and its CA are needed. */}}
{{- define "openai-runtime.checkTlsSecret" -}}
{{- $missing := list }}
{{- if not .Values.webhook.tls.secretName }}
{{- $missing = append $missing "webhook.tls.secretName (a Secret in the release namespace with tls.crt and tls.key)" }}
{{- end }}
{{- if not .Values.webhook.tls.caBundle }}
{{- $missing = append $missing "webhook.tls.caBundle (the base64-encoded PEM CA that signed tls.crt)" }}
{{- end }}
{{- if $missing }}
{{- fail (printf "webhook.tls.mode=secret needs %s" (join " and " $missing)) }}
{{- end }}
{{- end }}

{{/* Where the operator reads a certificate it did not make (certManager, secret). */}}
{{- define "openai-runtime.tlsCertDir" -}}
/etc/openai-runtime/webhook-tls
{{- end }}

{{/*
Namespaces the webhook may inject into when watchNamespaces is set: the watched
ones minus the release namespace, kube-system and webhook.excludeNamespaces.
Rendered as a YAML list; fails when nothing is left.
*/}}
{{- define "openai-runtime.injectNamespaces" -}}
{{- $never := concat (list .Release.Namespace "kube-system") .Values.webhook.excludeNamespaces }}
{{- $left := list }}
{{- range .Values.watchNamespaces }}
{{- if and (not (has . $never)) (not (has . $left)) }}
{{- $left = append $left . }}
{{- end }}
{{- end }}
{{- if not $left }}
{{- fail (printf "watchNamespaces %v leaves no namespace for the webhook to inject into: the release namespace %s, kube-system and webhook.excludeNamespaces are never injected" .Values.watchNamespaces .Release.Namespace) }}
{{- end }}
{{- toYaml $left }}
{{- end }}

{{/*
The operator's rules on namespaced objects: in the ClusterRole of a cluster-wide
install, in a Role per watched namespace with watchNamespaces.
*/}}
{{- define "openai-runtime.namespacedRules" -}}
# Reconcile runtimes; kopf keeps its progress and diff-base in annotations (patch).
- apiGroups: ["infer.atomr.io"]
  resources: ["openairuntimes"]
  verbs: ["get", "list", "watch", "patch"]
# Conditions, observedGeneration, credential fingerprint, convergence.
- apiGroups: ["infer.atomr.io"]
  resources: ["openairuntimes/status"]
  verbs: ["patch"]
# The rendered sidecar config, one ConfigMap per runtime, owned by it (garbage
# collection deletes it). Its ownerReference says blockOwnerDeletion: false, so
# nothing on openairuntimes/finalizers (OwnerReferencesPermissionEnforcement,
# on by default on OpenShift, would demand update there otherwise).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
# Fingerprint the referenced key and see rotations. Read-only.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
# Find a runtime's pods (convergence) and annotate them on rotation.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "patch"]
# Normal and Warning Events on runtimes.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if .Values.sidecarNetworkPolicy.enabled }}
# Fence off the sidecars' admin port: one NetworkPolicy per runtime in its
# namespace, owned by it like the ConfigMap (no delete, no finalizers).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- end }}
{{- end }}
