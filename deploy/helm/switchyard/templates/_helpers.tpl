{{/*
Names. The fullname is capped at 40 characters so that
"<fullname>-expert-headless" (Service names: 63) and
"<fullname>-expert-<ordinal>" (StatefulSet names must leave room for the
controller-revision-hash label) stay within Kubernetes' limits.
*/}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Common labels; call with (dict "ctx" $ "component" "trunk"). */}}
{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" .ctx }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels; call with (dict "ctx" $ "component" "trunk"). */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/* Object names per component. */}}
{{- define "switchyard.trunk.name" -}}{{ include "switchyard.fullname" . }}-trunk{{- end -}}
{{- define "switchyard.trunk.headless" -}}{{ include "switchyard.fullname" . }}-trunk-headless{{- end -}}
{{- define "switchyard.expert.name" -}}{{ include "switchyard.fullname" . }}-expert{{- end -}}
{{- define "switchyard.expert.headless" -}}{{ include "switchyard.fullname" . }}-expert-headless{{- end -}}
{{- define "switchyard.coordinator.name" -}}{{ include "switchyard.fullname" . }}-coordinator{{- end -}}
{{- define "switchyard.etcd.name" -}}{{ include "switchyard.fullname" . }}-etcd{{- end -}}
{{- define "switchyard.etcd.headless" -}}{{ include "switchyard.fullname" . }}-etcd-headless{{- end -}}
{{- define "switchyard.modelCache.name" -}}{{ include "switchyard.fullname" . }}-model-cache{{- end -}}

{{- define "switchyard.secretName" -}}
{{- default (printf "%s-secrets" (include "switchyard.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/*
Peer TLS (tls.peer): the Secret the trunk and expert nodes mount, and the DNS
names its certificate must hold (the headless Services' per-pod names, with
and without the cluster domain), as a JSON list.
*/}}
{{- define "switchyard.peerTLS.secretName" -}}
{{- default (printf "%s-peer-tls" (include "switchyard.fullname" .)) .Values.tls.peer.existingSecret -}}
{{- end -}}

{{- define "switchyard.peerTLS.dnsNames" -}}
{{- $names := list -}}
{{- range $svc := list (include "switchyard.expert.headless" .) (include "switchyard.trunk.headless" .) -}}
{{- $names = append $names (printf "*.%s.%s" $svc (include "switchyard.svcSuffix" $)) -}}
{{- $names = append $names (printf "*.%s.%s.svc" $svc $.Release.Namespace) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* The peer TLS flags of trunk and expert nodes (none when tls.peer is off). */}}
{{- define "switchyard.peerTLS.args" -}}
{{- if .Values.tls.peer.enabled -}}
- --peer-tls-cert=/etc/switchyard/peer-tls/tls.crt
- --peer-tls-key=/etc/switchyard/peer-tls/tls.key
- --peer-tls-ca=/etc/switchyard/peer-tls/ca.crt
{{- end -}}
{{- end -}}

{{/*
Per-client API tokens (auth.tokens): "true" when the trunk nodes get a tokens
file, the Secret holding it, and its key.
*/}}
{{- define "switchyard.apiTokens.enabled" -}}
{{- $t := .Values.auth.tokens -}}
{{- if and .Values.auth.enabled (or $t.existingSecret $t.clients) -}}true{{- end -}}
{{- end -}}

{{- define "switchyard.apiTokens.secretName" -}}
{{- default (printf "%s-api-tokens" (include "switchyard.fullname" .)) .Values.auth.tokens.existingSecret -}}
{{- end -}}

{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The expert image: the GPU build (tag + gpu.imageTagSuffix) when GPUs are enabled. */}}
{{- define "switchyard.expertImage" -}}
{{- if and .Values.gpu.enabled (not .Values.image.digest) -}}
{{- printf "%s:%s%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) .Values.gpu.imageTagSuffix -}}
{{- else -}}
{{- include "switchyard.image" . -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* The in-cluster DNS suffix of the release namespace: <ns>.svc.<domain>. */}}
{{- define "switchyard.svcSuffix" -}}
{{- printf "%s.svc.%s" .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
etcd client endpoints as one comma-separated string (the --etcd flag): every
member of the internal StatefulSet by its stable DNS name, or the external list.
*/}}
{{- define "switchyard.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "external" -}}
{{- join "," .Values.etcd.external.endpoints -}}
{{- else -}}
{{- $name := include "switchyard.etcd.name" . -}}
{{- $svc := include "switchyard.etcd.headless" . -}}
{{- $suffix := include "switchyard.svcSuffix" . -}}
{{- $eps := list -}}
{{- range $i := until (int .Values.etcd.internal.replicas) -}}
{{- $eps = append $eps (printf "http://%s-%d.%s.%s:2379" $name $i $svc $suffix) -}}
{{- end -}}
{{- join "," $eps -}}
{{- end -}}
{{- end -}}

{{/* etcd --initial-cluster: member name = pod name, peer URL = its stable DNS name. */}}
{{- define "switchyard.etcd.initialCluster" -}}
{{- $name := include "switchyard.etcd.name" . -}}
{{- $svc := include "switchyard.etcd.headless" . -}}
{{- $suffix := include "switchyard.svcSuffix" . -}}
{{- $members := list -}}
{{- range $i := until (int .Values.etcd.internal.replicas) -}}
{{- $members = append $members (printf "%s-%d=http://%s-%d.%s.%s:2380" $name $i $name $i $svc $suffix) -}}
{{- end -}}
{{- join "," $members -}}
{{- end -}}

{{/*
Folder of a downloaded repo (model.source "download"): /models/<repoId>/<revision>,
so every repo and revision has its own folder in a shared cache ("/" in a
revision such as refs/pr/1 becomes "--").
*/}}
{{- define "switchyard.downloadDir" -}}
{{- $d := .Values.model.download -}}
{{- printf "/models/%s/%s" $d.repoId ($d.revision | replace "/" "--") -}}
{{- end -}}

{{/* Path of the checkpoint inside the pods (the --model flag). */}}
{{- define "switchyard.modelPath" -}}
{{- $base := "/models" -}}
{{- if eq .Values.model.source "download" -}}
{{- $base = include "switchyard.downloadDir" . -}}
{{- end -}}
{{- if .Values.model.path -}}
{{- printf "%s/%s" $base (trimPrefix "/" .Values.model.path) -}}
{{- else -}}
{{- $base -}}
{{- end -}}
{{- end -}}

{{/* "true" when downloads go to the shared PersistentVolumeClaim cache (filled by the download Job). */}}
{{- define "switchyard.sharedCache" -}}
{{- if and (eq .Values.model.source "download") (eq .Values.model.cache.type "persistentVolumeClaim") -}}true{{- end -}}
{{- end -}}

{{- define "switchyard.modelCache.claimName" -}}
{{- $c := .Values.model.cache.persistentVolumeClaim -}}
{{- if $c.create -}}
{{- include "switchyard.modelCache.name" . -}}
{{- else -}}
{{- $c.existingClaim -}}
{{- end -}}
{{- end -}}

{{/*
Pod environment shared by the Switchyard roles; call with
(dict "ctx" $ "role" "trunk"). POD_NAME and POD_NAMESPACE come first so that
later values and the container args can reference them as $(POD_NAME).
*/}}
{{- define "switchyard.env" -}}
{{- $v := .ctx.Values -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: SWITCHYARD_ROLE
  value: {{ .role | quote }}
- name: SWITCHYARD_GOSSIP_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.secretName" .ctx }}
      key: gossip-key
{{- if eq .role "trunk" }}
- name: SWITCHYARD_SNAPSHOT_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.secretName" .ctx }}
      key: snapshot-key
      optional: true
{{- end }}
{{- if and (eq .role "trunk") $v.auth.enabled $v.auth.sharedToken }}
- name: SWITCHYARD_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "switchyard.secretName" .ctx }}
      key: api-token
{{- end }}
{{- if and (eq $v.etcd.mode "external") $v.etcd.external.tls.enabled }}
- name: SWITCHYARD_ETCD_CA
  value: /etc/switchyard/etcd-tls/ca.crt
- name: SWITCHYARD_ETCD_CERT
  value: /etc/switchyard/etcd-tls/tls.crt
- name: SWITCHYARD_ETCD_KEY
  value: /etc/switchyard/etcd-tls/tls.key
{{- end }}
{{- if $v.otel.enabled }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "switchyard-%s" .role | quote }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ $v.otel.endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ $v.otel.protocol | quote }}
- name: OTEL_EXPORTER_OTLP_INSECURE
  value: {{ $v.otel.insecure | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ $v.otel.tracesSampler | quote }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ $v.otel.tracesSamplerArg | quote }}
{{- $attrs := list "k8s.namespace.name=$(POD_NAMESPACE)" "k8s.pod.name=$(POD_NAME)" "service.instance.id=$(POD_NAME)" (printf "switchyard.role=%s" .role) }}
{{- range $k, $val := $v.otel.resourceAttributes }}
{{- $attrs = append $attrs (printf "%s=%v" $k $val) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attrs | quote }}
{{- if $v.otel.headersSecret.name }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ $v.otel.headersSecret.name }}
      key: {{ $v.otel.headersSecret.key }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Metrics wiring of a role; call with (dict "ctx" $ "role" "trunk").
"switchyard.metricsFlag" is the role's flag name, or "" when the role serves no
metrics (metrics disabled, or metrics.flags.<role> empty).
*/}}
{{- define "switchyard.metricsFlag" -}}
{{- if .ctx.Values.metrics.enabled -}}
{{- get .ctx.Values.metrics.flags .role -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.metricsArgs" -}}
{{- with include "switchyard.metricsFlag" . -}}
- {{ printf "%s=:%d" . (int $.ctx.Values.metrics.port) | quote }}
{{- if $.ctx.Values.metrics.pprof }}
- "--enable-pprof"
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "switchyard.metricsPort" -}}
{{- if include "switchyard.metricsFlag" . -}}
- name: metrics
  containerPort: {{ .ctx.Values.metrics.port }}
{{- end -}}
{{- end -}}

{{/* Pod annotations for Prometheus' kubernetes_sd "prometheus.io" convention. */}}
{{- define "switchyard.metricsAnnotations" -}}
{{- if and (include "switchyard.metricsFlag" .) .ctx.Values.metrics.podAnnotations -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .ctx.Values.metrics.port | quote }}
prometheus.io/path: {{ .ctx.Values.metrics.path | quote }}
{{- end -}}
{{- end -}}

{{/*
gRPC health probes on a port; call with (dict "ctx" $ "port" 7070 "service" "x"
"tls" true). Kubernetes gRPC probes are plaintext, so a TLS port gets TCP checks.
*/}}
{{- define "switchyard.probes" -}}
{{- $p := .ctx.Values.probes -}}
{{- $check := "" -}}
{{- if .tls -}}
{{- $check = printf "tcpSocket:\n  port: grpc" -}}
{{- else -}}
{{- $check = printf "grpc:\n  port: %d" (int .port) -}}
{{- end -}}
startupProbe:
  {{- $check | nindent 2 }}
  periodSeconds: {{ $p.startup.periodSeconds }}
  timeoutSeconds: {{ $p.startup.timeoutSeconds }}
  failureThreshold: {{ $p.startup.failureThreshold }}
livenessProbe:
  {{- $check | nindent 2 }}
  periodSeconds: {{ $p.liveness.periodSeconds }}
  timeoutSeconds: {{ $p.liveness.timeoutSeconds }}
  failureThreshold: {{ $p.liveness.failureThreshold }}
readinessProbe:
  {{- if .tls }}
  {{- $check | nindent 2 }}
  {{- else }}
  grpc:
    port: {{ .port }}
    service: {{ .service | quote }}
  {{- end }}
  periodSeconds: {{ $p.readiness.periodSeconds }}
  timeoutSeconds: {{ $p.readiness.timeoutSeconds }}
  failureThreshold: {{ $p.readiness.failureThreshold }}
  successThreshold: {{ $p.readiness.successThreshold }}
{{- end -}}

{{/* Volumes shared by the Switchyard pods (model volume excluded). */}}
{{- define "switchyard.commonVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 1Gi
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  secret:
    secretName: {{ .Values.etcd.external.tls.existingSecret }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{- define "switchyard.commonVolumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: model
  mountPath: /models
  readOnly: true
{{- if and (eq .Values.etcd.mode "external") .Values.etcd.external.tls.enabled }}
- name: etcd-tls
  mountPath: /etc/switchyard/etcd-tls
  readOnly: true
{{- end }}
{{- end -}}

{{/*
The model volume of a pod; call with (dict "ctx" $ "role" "trunk").
- source pvc / hostPath: the pre-loaded checkpoint, read-only;
- source download: the cache (model.cache.type). The serving containers mount
  it read-only (switchyard.commonVolumeMounts); only the model-download init
  container writes to it. The coordinator, which needs config.json alone, gets
  its own emptyDir unless the cache is the shared claim.
*/}}
{{- define "switchyard.modelVolume" -}}
{{- $m := .ctx.Values.model -}}
{{- if eq $m.source "pvc" }}
- name: model
  persistentVolumeClaim:
    claimName: {{ $m.pvc.claimName }}
    readOnly: true
{{- else if eq $m.source "hostPath" }}
- name: model
  hostPath:
    path: {{ $m.hostPath.path }}
    type: {{ $m.hostPath.type }}
{{- else if include "switchyard.sharedCache" .ctx }}
- name: model
  persistentVolumeClaim:
    claimName: {{ include "switchyard.modelCache.claimName" .ctx }}
{{- else if and (eq $m.cache.type "hostPath") (ne .role "coordinator") }}
- name: model
  hostPath:
    path: {{ $m.cache.hostPath.path }}
    type: DirectoryOrCreate
{{- else }}
- name: model
  emptyDir:
    sizeLimit: {{ $m.cache.emptyDir.sizeLimit }}
{{- end }}
{{- end -}}

{{/*
--include patterns of a role's downloader: model.download.allowPatterns, except
for a coordinator with a cache of its own, which fetches only what it reads
(config.json, or the .gguf named by model.path).
*/}}
{{- define "switchyard.downloadPatterns" -}}
{{- $v := .ctx.Values -}}
{{- $patterns := $v.model.download.allowPatterns -}}
{{- if and (eq .role "coordinator") (not (include "switchyard.sharedCache" .ctx)) -}}
{{- $p := trimPrefix "/" $v.model.path | trimSuffix "/" -}}
{{- if hasSuffix ".gguf" $p -}}
{{- $patterns = list $p -}}
{{- else if $p -}}
{{- $patterns = list (printf "%s/config.json" $p) -}}
{{- else -}}
{{- $patterns = list "config.json" -}}
{{- end -}}
{{- end -}}
{{- join "," $patterns -}}
{{- end -}}

{{/*
The downloader container: `switchyard download` from the Switchyard image. Call
with (dict "ctx" $ "role" "trunk"|"expert"|"coordinator"|"job"). It writes into
the model volume at /models and needs /tmp (the tmp volume).
*/}}
{{- define "switchyard.downloadContainer" -}}
{{- $v := .ctx.Values -}}
{{- $d := $v.model.download -}}
{{- $include := include "switchyard.downloadPatterns" . -}}
- name: model-download
  image: {{ include "switchyard.image" .ctx | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  args:
    - download
    - {{ printf "--repo=%s" $d.repoId | quote }}
    - {{ printf "--revision=%s" $d.revision | quote }}
    - {{ printf "--dir=%s" (include "switchyard.downloadDir" .ctx) | quote }}
    {{- with $include }}
    - {{ printf "--include=%s" . | quote }}
    {{- end }}
    {{- with $d.endpoint }}
    - {{ printf "--endpoint=%s" . | quote }}
    {{- end }}
    {{- include "switchyard.logArgs" .ctx | nindent 4 }}
  env:
    - name: HOME
      value: /tmp
    {{- if $d.token.existingSecret }}
    - name: HF_TOKEN
      valueFrom:
        secretKeyRef:
          name: {{ $d.token.existingSecret }}
          key: {{ $d.token.key }}
    {{- end }}
    {{- with $d.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  securityContext:
    {{- toYaml $v.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml $d.resources | nindent 4 }}
  volumeMounts:
    - name: model
      mountPath: /models
    - name: tmp
      mountPath: /tmp
{{- end -}}

{{/*
Pod template of the download Job (cache type persistentVolumeClaim). Its hash
names the Job: a Job's template is immutable, so a change (repo, revision,
image, chart version) makes a new Job instead of a failed upgrade.
*/}}
{{- define "switchyard.downloadJobTemplate" -}}
metadata:
  labels:
    {{- include "switchyard.labels" (dict "ctx" . "component" "model-download") | nindent 4 }}
spec:
  restartPolicy: OnFailure
  serviceAccountName: {{ include "switchyard.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.model.download.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.model.download.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    {{- include "switchyard.downloadContainer" (dict "ctx" . "role" "job") | nindent 4 }}
  volumes:
    - name: model
      persistentVolumeClaim:
        claimName: {{ include "switchyard.modelCache.claimName" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
{{- end -}}

{{- define "switchyard.downloadJob.name" -}}
{{- printf "%s-model-%s" (include "switchyard.fullname" .) (include "switchyard.downloadJobTemplate" . | sha256sum | trunc 8) -}}
{{- end -}}

{{/*
Logging flags shared by the roles (--log-format, --log-level).
*/}}
{{/* Gossip (memberlist) flags: bound on all interfaces, advertised on the pod IP,
encrypted with the Secret's gossip key ($SWITCHYARD_GOSSIP_KEY). */}}
{{- define "switchyard.gossipArgs" -}}
{{- if .Values.gossip.enabled }}
- {{ printf "--gossip-bind=0.0.0.0:%d" (int .Values.gossip.port) | quote }}
- {{ printf "--gossip-advertise=$(POD_IP):%d" (int .Values.gossip.port) | quote }}
{{- end }}
{{- end -}}

{{- define "switchyard.gossipPorts" -}}
{{- if .Values.gossip.enabled }}
- name: gossip-tcp
  containerPort: {{ .Values.gossip.port }}
  protocol: TCP
- name: gossip-udp
  containerPort: {{ .Values.gossip.port }}
  protocol: UDP
{{- end }}
{{- end -}}

{{- define "switchyard.logArgs" -}}
- {{ printf "--log-format=%s" .Values.logging.format | quote }}
- {{ printf "--log-level=%s" .Values.logging.level | quote }}
{{- end -}}

{{/*
PromQL label matchers of this release's series (metrics.seriesSelector, or the
release namespace), without braces.
*/}}
{{- define "switchyard.seriesSelector" -}}
{{- default (printf "namespace=%q" .Release.Namespace) .Values.metrics.seriesSelector -}}
{{- end -}}
