{{/* Names ------------------------------------------------------------------------------- */}}

{{- define "trapline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "trapline.fullname" -}}
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

{{- define "trapline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trapline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels: common, and the selector labels of one component (worker, triton, ray). */}}
{{- define "trapline.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "trapline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trapline
{{- end }}

{{/* All labels of one component's objects and pods. */}}
{{- define "trapline.componentLabels" -}}
{{ include "trapline.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "trapline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trapline.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Images: a digest wins over a tag. */}}
{{- define "trapline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "trapline.tritonImage" -}}
{{- if .Values.triton.image.digest }}
{{- printf "%s@%s" .Values.triton.image.repository .Values.triton.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.triton.image.repository .Values.triton.image.tag }}
{{- end }}
{{- end }}

{{/* The Kafka consumers one `trapline serve` process runs, and their metrics ports. */}}
{{- define "trapline.serveWorkers" -}}
{{- if .Values.rayCluster.enabled }}{{ int .Values.rayCluster.actors }}{{ else }}{{ int .Values.workers.perPod }}{{ end }}
{{- end }}

{{- define "trapline.metricsPortCount" -}}
{{- max 1 (int (include "trapline.serveWorkers" .)) }}
{{- end }}

{{- define "trapline.tritonUrl" -}}
{{- printf "grpc://%s-triton.%s.svc:8001" (include "trapline.fullname" .) .Release.Namespace }}
{{- end }}

{{/* Environment of every Trapline container: the ConfigMap plus credentials from Secrets.
     Call with (dict "root" $ "extra" (list (dict "name" N "value" V))); "storageOnly" true
     leaves out the Kafka credentials (init containers that only read object storage). */}}
{{- define "trapline.env" -}}
{{- $root := .root -}}
envFrom:
  - configMapRef:
      name: {{ include "trapline.fullname" $root }}-config
env:
  - name: HOME
    value: /tmp
{{- if not .storageOnly }}
{{- with $root.Values.kafka.sasl.existingSecret }}
  - name: TRAPLINE_KAFKA_SASL_USERNAME
    valueFrom:
      secretKeyRef: {name: {{ . | quote }}, key: {{ $root.Values.kafka.sasl.usernameKey | quote }}}
  - name: TRAPLINE_KAFKA_SASL_PASSWORD
    valueFrom:
      secretKeyRef: {name: {{ . | quote }}, key: {{ $root.Values.kafka.sasl.passwordKey | quote }}}
{{- end }}
{{- end }}
{{- include "trapline.s3Env" $root }}
{{- with .extra }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- with $root.Values.extraEnv }}
{{ toYaml . | indent 2 }}
{{- end }}
{{- end }}

{{/* How the worker's consumers get their partitions, as a YAML list for "extra":
kafka.partitionAssignment=ordinal: fixed ownership, no group protocol (docs/operations.md, "Fixed
partition ownership"): TRAPLINE_WORKER_REPLICAS = the StatefulSet's pods, each pod's ordinal read
from its host name (trapline-worker-3 is 3); on KubeRay the one driver is ordinal 0 of 1.
group (the default) with kafka.staticMembership: TRAPLINE_GROUP_INSTANCE_ID = the pod's name,
stable across the restarts of a pod (and, in the worker StatefulSet, its replacements), unique
across pods; the process's consumers join as <pod name>-<i>. */}}
{{- define "trapline.consumerIdentityEnv" -}}
{{- $assignment := .Values.kafka.partitionAssignment | default "group" }}
{{- if not (has $assignment (list "group" "ordinal")) }}
{{- fail (printf "kafka.partitionAssignment must be group or ordinal, not %q" $assignment) }}
{{- end }}
{{- if eq $assignment "ordinal" }}
{{- if .Values.keda.enabled }}
{{- fail "kafka.partitionAssignment=ordinal shares the partitions among workers.replicas pods; keda.enabled changes the pod count without changing the shares: use one or the other" }}
{{- end }}
- name: TRAPLINE_PARTITION_ASSIGNMENT
  value: ordinal
- name: TRAPLINE_WORKER_REPLICAS
  value: {{ ternary 1 .Values.workers.replicas .Values.rayCluster.enabled | quote }}
{{- if .Values.rayCluster.enabled }}
- name: TRAPLINE_WORKER_ORDINAL
  value: "0"
{{- end }}
{{- else if .Values.kafka.staticMembership }}
- name: TRAPLINE_GROUP_INSTANCE_ID
  valueFrom:
    fieldRef: {fieldPath: metadata.name}
{{- else }}
[]
{{- end }}
{{- end }}

{{- define "trapline.s3Env" -}}
{{- with .Values.s3.existingSecret }}
  - name: AWS_ACCESS_KEY_ID
    valueFrom:
      secretKeyRef: {name: {{ . | quote }}, key: {{ $.Values.s3.accessKeyIdKey | quote }}}
  - name: AWS_SECRET_ACCESS_KEY
    valueFrom:
      secretKeyRef: {name: {{ . | quote }}, key: {{ $.Values.s3.secretAccessKeyKey | quote }}}
{{- end }}
{{- end }}

{{/* Volumes every Trapline pod mounts: /tmp (the root filesystem is read-only), models, CA. */}}
{{- define "trapline.volumes" -}}
- name: tmp
  emptyDir: {sizeLimit: {{ .tmpSize }}}
{{- if .shmSize }}
- name: dshm
  emptyDir: {medium: Memory, sizeLimit: {{ .shmSize }}}
{{- end }}
{{- if .root.Values.models.url }}
- name: models
  emptyDir: {sizeLimit: {{ .root.Values.models.sizeLimit }}}
{{- end }}
{{- with .root.Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ . | quote }}
    items: [{key: {{ $.root.Values.kafka.tls.caKey | quote }}, path: ca.crt}]
{{- end }}
{{- with .root.Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "trapline.volumeMounts" -}}
- {name: tmp, mountPath: /tmp}
{{- if .shmSize }}
- {name: dshm, mountPath: /dev/shm}
{{- end }}
{{- if .root.Values.models.url }}
- {name: models, mountPath: /models, readOnly: true}
{{- end }}
{{- if .root.Values.kafka.tls.caSecret }}
- {name: kafka-ca, mountPath: /etc/trapline/kafka-ca, readOnly: true}
{{- end }}
{{- with .root.Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Init container: copy a folder from object storage (fsspec) into a mounted emptyDir. */}}
{{- define "trapline.fetchContainer" -}}
- name: {{ .name }}
  image: {{ include "trapline.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["python", "-c"]
  args:
    - |
      import sys, fsspec
      source, target = sys.argv[1].rstrip("/"), sys.argv[2].rstrip("/")
      fs, root = fsspec.core.url_to_fs(source)
      if not fs.isdir(root):
          sys.exit(f"{source}: no such folder (check the URL and the S3 keys)")
      fs.get(root + "/", target + "/", recursive=True)
      print(f"copied {source} to {target}")
    - {{ .url | quote }}
    - {{ .target | quote }}
  {{- include "trapline.env" (dict "root" .root "storageOnly" true) | nindent 2 }}
  securityContext:
    {{- toYaml .root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests: {cpu: 100m, memory: 256Mi}
    limits: {cpu: "1", memory: 1Gi}
  volumeMounts:
    - {name: tmp, mountPath: /tmp}
    - {name: {{ .volume }}, mountPath: {{ .target }}}
{{- end }}

{{/* Probes on the metrics port of worker 0. */}}
{{- define "trapline.workerProbes" -}}
startupProbe:
  httpGet: {path: /healthz, port: metrics-0}
  {{- toYaml .Values.workers.probes.startup | nindent 2 }}
livenessProbe:
  httpGet: {path: /healthz, port: metrics-0}
  {{- toYaml .Values.workers.probes.liveness | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: metrics-0}
  {{- toYaml .Values.workers.probes.readiness | nindent 2 }}
{{- end }}

{{- define "trapline.metricsPorts" -}}
{{- range $i := until (int (include "trapline.metricsPortCount" .)) }}
- name: metrics-{{ $i }}
  containerPort: {{ add $.Values.metrics.port $i }}
  protocol: TCP
{{- end }}
{{- end }}
