package helmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// variant is one set of values and what its rendering must contain.
type variant struct {
	name  string
	files []string // under values/
	sets  []string // --set pairs

	trunks, experts, coordinators int32
	etcdMembers                   int      // members of the chart's etcd; 0 with external etcd
	externalEtcd                  []string // external endpoints
	etcdTLS                       bool     // etcd client certificate mounted
	gpus                          int64    // GPUs per expert pod; 0: GPUs disabled
	runtimeClass                  string
	modelSource                   string // download, pvc, hostPath
	modelSubPath                  string // model.path
	download                      bool
	// With downloads: model.cache.type (persistentVolumeClaim, hostPath or
	// emptyDir), the shared claim's name (persistentVolumeClaim), the repo and
	// revision, the --include list of trunk and expert downloaders, and the
	// Secret/key of HF_TOKEN ("" for none).
	cache, cacheClaim   string
	repo, revision      string
	include             []string
	hfToken             string
	auth                bool   // the public API requires the token
	clientTokensOnly    bool   // per-client tokens only (auth.sharedToken false)
	logFormat, logLevel string // --log-format, --log-level of every role
	keda                bool   // KEDA ScaledObject for the trunks
	prometheusRule      bool
	publicTLS, peerTLS  bool
	serviceMonitor      bool
	otel                bool
	generatedSecret     bool
	metricsOff          []string // roles expected to serve no metrics
	pprof               bool     // --enable-pprof on every role that serves metrics
	probeExempt         []string // containers allowed to run without probes
	// unknownFlags are flags (per role) the variant wires for a binary that
	// does not have them yet; they are left out of the flag-set check.
	unknownFlags map[string][]string
	external     []string // "Kind/name" objects referenced but not rendered by the chart
	extra        func(t *testing.T, m *manifests)
}

func (v *variant) etcdEndpoints() []string {
	if v.etcdMembers == 0 {
		return v.externalEtcd
	}
	var eps []string
	for i := range v.etcdMembers {
		eps = append(eps, fmt.Sprintf("http://%s-etcd-%d.%s-etcd-headless.%s.svc.cluster.local:2379", fullname, i, fullname, namespace))
	}
	return eps
}

// downloadDir is the folder of the downloaded repo: /models/<repo>/<revision>.
func (v *variant) downloadDir() string {
	return "/models/" + v.repo + "/" + strings.ReplaceAll(v.revision, "/", "--")
}

func (v *variant) modelPath() string {
	base := "/models"
	if v.modelSource == "download" {
		base = v.downloadDir()
	}
	if v.modelSubPath != "" {
		return base + "/" + v.modelSubPath
	}
	return base
}

func (v *variant) isExternal(kind, name string) bool {
	return slices.Contains(v.external, kind+"/"+name)
}

func (v *variant) metricsRoles() map[string]bool {
	out := map[string]bool{"trunk": true, "expert": true, "coordinator": true}
	for _, r := range v.metricsOff {
		out[r] = false
	}
	if v.unknownFlags != nil && slices.Contains(v.unknownFlags["coordinator"], "--metrics-addr") {
		out["coordinator"] = true
	}
	return out
}

// defaults returns the expectations of the chart's default values.
func defaults(name string, files ...string) variant {
	return variant{
		name: name, files: files,
		trunks: 2, experts: 2, coordinators: 2, etcdMembers: 3, gpus: 1,
		modelSource: "download", download: true, generatedSecret: true,
		cache: "persistentVolumeClaim", cacheClaim: fullname + "-model-cache",
		repo: "ibm-granite/granite-4.0-h-tiny", revision: "main",
		auth: true, logFormat: "json", logLevel: "info", peerTLS: true,
	}
}

func variants() []variant {
	def := defaults("default")
	def.extra = func(t *testing.T, m *manifests) {
		trunk := m.statefulSet(fullname + "-trunk")
		c := container(&trunk.Spec.Template.Spec, "trunk")
		if got, _ := flagValue(c.Args, "drain-timeout"); got != "30s" {
			t.Errorf("trunk --drain-timeout=%s, want 30s", got)
		}
		if g := ptrVal(trunk.Spec.Template.Spec.TerminationGracePeriodSeconds, 0); g != 50 {
			t.Errorf("trunk terminationGracePeriodSeconds %d, want 5 (preStop) + 30 (drain) + 15", g)
		}
		if c.Lifecycle == nil || c.Lifecycle.PreStop == nil || c.Lifecycle.PreStop.Sleep == nil || c.Lifecycle.PreStop.Sleep.Seconds != 5 {
			t.Errorf("trunk preStop sleep of 5 s expected: %+v", c.Lifecycle)
		}
		svc := m.service(fullname + "-trunk")
		if svc == nil || svc.Spec.Type != corev1.ServiceTypeClusterIP || len(svc.Spec.Ports) != 2 || svc.Spec.Ports[0].Port != 7070 ||
			svc.Spec.Ports[1].Name != "http" || svc.Spec.Ports[1].Port != 8000 {
			t.Errorf("client Service %s-trunk: want ClusterIP with grpc on 7070 and http (the OpenAI API) on 8000: %+v", fullname, svc)
		}
		// The shared cache: a ReadWriteMany claim the chart creates and keeps
		// on uninstall, filled by one Job.
		pvc := m.pvc(fullname + "-model-cache")
		if pvc == nil || !slices.Contains(pvc.Spec.AccessModes, corev1.ReadWriteMany) || pvc.Annotations["helm.sh/resource-policy"] != "keep" {
			t.Errorf("model cache claim: ReadWriteMany, kept on uninstall: %+v", pvc)
		} else if q := pvc.Spec.Resources.Requests[corev1.ResourceStorage]; q.String() != "100Gi" {
			t.Errorf("model cache claim size %s, want 100Gi", q.String())
		}
		// Probes: native gRPC health checks on a port of the container (the
		// expert nodes' plaintext health-only port, as their service speaks
		// mutual TLS).
		ex := m.statefulSet(fullname + "-expert")
		for _, c := range []*corev1.Container{c, container(&ex.Spec.Template.Spec, "expert")} {
			for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
				if p == nil || p.GRPC == nil || !hasPort(c, intstr.FromInt32(p.GRPC.Port)) {
					t.Errorf("%s: gRPC probes on a port of the container expected: %+v", c.Name, p)
				}
			}
		}
	}

	ext := defaults("external-etcd-tls", "external-etcd-tls.yaml")
	ext.etcdMembers = 0
	ext.externalEtcd = []string{"https://etcd-0.etcd.platform.svc.cluster.local:2379", "https://etcd-1.etcd.platform.svc.cluster.local:2379", "https://etcd-2.etcd.platform.svc.cluster.local:2379"}
	ext.etcdTLS = true
	ext.external = []string{"Secret/switchyard-etcd-client"}

	noGPU := defaults("no-gpu", "no-gpu.yaml")
	noGPU.gpus = 0
	noGPU.modelSource, noGPU.modelSubPath, noGPU.download = "hostPath", "granite-4.0-h-tiny-Q8_0.gguf", false
	noGPU.extra = func(t *testing.T, m *manifests) {
		for _, w := range m.workloads() {
			for _, vol := range w.tpl.Spec.Volumes {
				if vol.Name == "model" && (vol.HostPath == nil || vol.HostPath.Path != "/var/lib/switchyard/models") {
					t.Errorf("%s: model volume is not the hostPath: %+v", w.name, vol)
				}
			}
		}
	}

	scale := defaults("scale", "scale.yaml")
	scale.trunks, scale.experts, scale.coordinators, scale.etcdMembers = 4, 8, 3, 5
	scale.gpus, scale.runtimeClass = 2, "nvidia"
	scale.extra = func(t *testing.T, m *manifests) {
		trunk := m.statefulSet(fullname + "-trunk")
		c := container(&trunk.Spec.Template.Spec, "trunk")
		want := map[string]string{
			"recurrent-budget": "34359738368", "kv-budget": "68719476736", "session-ttl": "45m", "max-running": "128",
			"max-step-tokens": "1024", "max-context": "65536", "max-new-tokens": "4096", "rate-limit": "2.5",
			"trace-step-ratio": "0.02", "trace-slow-step": "250ms", "expert-metrics-detail": "true", "drain-timeout": "120s", "kv-dtype": "q8_0",
			"state-pool-bytes": "536870912",
		}
		for f, w := range want {
			if got, ok := flagValue(c.Args, f); !ok || got != w {
				t.Errorf("trunk --%s=%q, want %q", f, got, w)
			}
		}
		if g := ptrVal(trunk.Spec.Template.Spec.TerminationGracePeriodSeconds, 0); g != 5+120+15 {
			t.Errorf("trunk terminationGracePeriodSeconds %d, want %d", g, 5+120+15)
		}
		svc := m.service(fullname + "-trunk")
		if svc.Spec.Type != corev1.ServiceTypeLoadBalancer || svc.Spec.SessionAffinity != corev1.ServiceAffinityClientIP || !slices.Equal(svc.Spec.LoadBalancerSourceRanges, []string{"10.0.0.0/8"}) {
			t.Errorf("client Service: %+v", svc.Spec)
		}
		etcd := m.statefulSet(fullname + "-etcd")
		if a := etcd.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil || len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) != 1 {
			t.Errorf("etcd: hard anti-affinity expected: %+v", a)
		}
	}

	hf := defaults("hf-download", "hf-download.yaml")
	hf.repo, hf.revision = "ibm-granite/granite-4.0-h-small", "5b3c1f0a9d2e4c6b8a7f1e3d5c7b9a0f2e4d6c8b"
	hf.include = []string{"*.json", "*.safetensors", "tokenizer*"}
	hf.hfToken = "hf-token/hf_token"
	hf.cacheClaim = "shared-models"
	hf.external = []string{"Secret/hf-token", "PersistentVolumeClaim/shared-models"}
	hf.extra = func(t *testing.T, m *manifests) {
		if len(m.pvcs) != 0 {
			t.Errorf("existingClaim: the chart must not create a claim: %v", m.pvcs[0].Name)
		}
		for _, j := range m.jobs {
			c := &j.Spec.Template.Spec.Containers[0]
			if got, _ := flagValue(c.Args, "endpoint"); got != "https://hf-mirror.internal.example" {
				t.Errorf("Job %s: --endpoint=%q, want the mirror", j.Name, got)
			}
			if j.Spec.Template.Spec.NodeSelector["switchyard.io/hub-egress"] != "true" {
				t.Errorf("Job %s: model.download.nodeSelector not applied: %v", j.Name, j.Spec.Template.Spec.NodeSelector)
			}
		}
	}

	perNode := defaults("cache-hostpath", "cache-hostpath.yaml")
	perNode.gpus = 0
	perNode.cache, perNode.cacheClaim = "hostPath", ""
	perNode.revision = "refs/pr/7"

	emptyDir := defaults("cache-emptydir-gguf", "cache-emptydir-gguf.yaml")
	emptyDir.cache, emptyDir.cacheClaim = "emptyDir", ""
	emptyDir.repo, emptyDir.modelSubPath = "ibm-granite/granite-4.0-h-tiny-GGUF", "granite-4.0-h-tiny-Q8_0.gguf"
	emptyDir.include = []string{"granite-4.0-h-tiny-Q8_0.gguf"}
	emptyDir.auth, emptyDir.logFormat, emptyDir.logLevel = false, "text", "debug"

	ops := defaults("autoscaling-alerts", "autoscaling-alerts.yaml")
	ops.keda, ops.prometheusRule, ops.serviceMonitor = true, true, true
	ops.extra = func(t *testing.T, m *manifests) {
		so := m.scaledObjects[0]
		if so.Spec.MinReplicaCount == nil || *so.Spec.MinReplicaCount != 3 || so.Spec.MaxReplicaCount == nil || *so.Spec.MaxReplicaCount != 12 {
			t.Errorf("ScaledObject replicas %v..%v, want 3..12", so.Spec.MinReplicaCount, so.Spec.MaxReplicaCount)
		}
		for _, tr := range so.Spec.Triggers {
			if !strings.Contains(tr.Metadata["query"], `kubernetes_namespace="llm"`) || tr.Metadata["serverAddress"] != "http://thanos-query.monitoring.svc:9090" {
				t.Errorf("trigger %s: metrics.seriesSelector or serverAddress not applied: %v", tr.Name, tr.Metadata)
			}
			if tr.AuthenticationRef == nil || tr.AuthenticationRef.Name != "prometheus-auth" {
				t.Errorf("trigger %s: authenticationRef %+v, want prometheus-auth", tr.Name, tr.AuthenticationRef)
			}
		}
		rules := alertRules(m)
		if r, ok := rules["SwitchyardAPIErrorRatioHigh"]; !ok || !strings.Contains(r.Expr, `code=~"Internal|Unavailable"`) || r.Labels["team"] != "inference" {
			t.Errorf("error-ratio alert: the codes value and additionalLabels must apply: %+v", r)
		}
		if _, ok := rules["SwitchyardExpertNodeDown"]; ok {
			t.Errorf("alerts.expertDown.enabled=false, but the alert is rendered")
		}
		if m.prometheusRules[0].Labels["release"] != "kube-prometheus-stack" || m.prometheusRules[0].Namespace != "monitoring" {
			t.Errorf("PrometheusRule labels/namespace: %v %s", m.prometheusRules[0].Labels, m.prometheusRules[0].Namespace)
		}
	}

	pvc := defaults("pvc-tls-observability", "pvc-tls-observability.yaml")
	pvc.modelSource, pvc.modelSubPath, pvc.download = "pvc", "granite-4.0-h-tiny", false
	pvc.publicTLS, pvc.peerTLS, pvc.otel, pvc.serviceMonitor, pvc.generatedSecret = true, true, true, true, false
	pvc.pprof = true
	pvc.external = []string{"PersistentVolumeClaim/granite-models", "Secret/switchyard-public-tls", "Secret/switchyard-peer-tls",
		"Secret/switchyard-creds", "Secret/otel-headers"}
	pvc.extra = func(t *testing.T, m *manifests) {
		trunk := m.statefulSet(fullname + "-trunk")
		c := container(&trunk.Spec.Template.Spec, "trunk")
		e := envVar(c, "OTEL_RESOURCE_ATTRIBUTES")
		if e == nil || !strings.Contains(e.Value, "deployment.environment=staging") || !strings.Contains(e.Value, "k8s.pod.name=$(POD_NAME)") {
			t.Errorf("OTEL_RESOURCE_ATTRIBUTES: %+v", e)
		}
		var dash *corev1.ConfigMap
		for _, cm := range m.configMaps {
			if cm.Name == fullname+"-dashboard" {
				dash = cm
			}
		}
		if dash == nil || dash.Namespace != "monitoring" || dash.Annotations["grafana_folder"] != "Switchyard" {
			t.Errorf("dashboard ConfigMap in namespace monitoring with the folder annotation expected: %+v", dash)
		}
	}

	future := defaults("future-coordinator-flags", "future-coordinator-flags.yaml")
	future.probeExempt = nil
	future.unknownFlags = map[string][]string{"coordinator": {"--health-addr", "--metrics-addr"}}
	future.extra = func(t *testing.T, m *manifests) {
		coord := m.deployment(fullname + "-coordinator")
		c := container(&coord.Spec.Template.Spec, "coordinator")
		if got, _ := flagValue(c.Args, "health-addr"); got != ":7072" || c.ReadinessProbe == nil || c.ReadinessProbe.GRPC == nil || c.ReadinessProbe.GRPC.Port != 7072 {
			t.Errorf("coordinator health: --health-addr=%s, readiness %+v", got, c.ReadinessProbe)
		}
		if m.service(fullname+"-coordinator-headless") == nil {
			t.Errorf("coordinator metrics Service missing")
		}
	}

	cm := defaults("peer-cert-manager-client-tokens", "peer-cert-manager-client-tokens.yaml")
	cm.clientTokensOnly = true
	cm.extra = func(t *testing.T, m *manifests) {
		if m.secret(fullname+"-peer-tls") != nil || m.certificateFor(fullname+"-peer-tls") == nil {
			t.Errorf("cert-manager mode: a Certificate, not a Secret, must provide %s-peer-tls", fullname)
		}
		c := container(&m.statefulSet(fullname+"-trunk").Spec.Template.Spec, "trunk")
		if _, ok := flagValue(c.Args, "api-tokens-file"); !ok || envVar(c, "SWITCHYARD_API_TOKEN") != nil {
			t.Errorf("per-client tokens only: want --api-tokens-file and no shared token")
		}
	}

	// deterministic: false gives --deterministic=false to every trunk and
	// expert node (they need it together); by default none has the flag
	// (the binaries' default, on).
	det := defaults("deterministic")
	det.sets = []string{"deterministic=false"}
	det.extra = func(t *testing.T, m *manifests) {
		for _, role := range []string{"trunk", "expert"} {
			c := container(&m.statefulSet(fullname+"-"+role).Spec.Template.Spec, role)
			if !slices.Contains(c.Args, "--deterministic=false") {
				t.Errorf("%s args %v: want --deterministic=false", role, c.Args)
			}
		}
	}
	// mmap: true gives --mmap to every trunk and expert node; by default none
	// has it (the binaries copy their weights into memory).
	mm := defaults("mmap")
	mm.sets = []string{"mmap=true"}
	mm.extra = func(t *testing.T, m *manifests) {
		for _, role := range []string{"trunk", "expert"} {
			c := container(&m.statefulSet(fullname+"-"+role).Spec.Template.Spec, role)
			if !slices.Contains(c.Args, "--mmap") {
				t.Errorf("%s args %v: want --mmap", role, c.Args)
			}
		}
	}
	prevDef := def.extra
	def.extra = func(t *testing.T, m *manifests) {
		prevDef(t, m)
		for _, role := range []string{"trunk", "expert"} {
			c := container(&m.statefulSet(fullname+"-"+role).Spec.Template.Spec, role)
			for _, a := range c.Args {
				if strings.HasPrefix(a, "--deterministic") || strings.HasPrefix(a, "--mmap") {
					t.Errorf("%s: %s by default (the binaries' defaults: deterministic, weights copied)", role, a)
				}
			}
		}
	}

	return []variant{def, ext, noGPU, scale, hf, perNode, emptyDir, ops, pvc, future, cm, det, mm}
}

func TestVariants(t *testing.T) {
	used := map[string]bool{}
	for _, v := range variants() {
		for _, f := range v.files {
			used[f] = true
		}
		t.Run(v.name, func(t *testing.T) {
			args := append([]string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}, helmArgs(v.files, v.sets)...)
			if out, err := helm(args...); err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			m := render(t, v.files, v.sets)
			checkCommon(t, m, &v)
			checkVariant(t, m, &v)
			if v.extra != nil {
				v.extra(t, m)
			}
		})
	}
	// Every values file must belong to a variant with expectations.
	files, _ := filepath.Glob(filepath.Join("values", "*.yaml"))
	for _, f := range files {
		if !used[filepath.Base(f)] {
			t.Errorf("%s is not used by any variant in chart_test.go", f)
		}
	}
}

// checkVariant checks the expectations a variant states in its fields.
func checkVariant(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	trunk := m.statefulSet(fullname + "-trunk")
	expert := m.statefulSet(fullname + "-expert")
	coord := m.deployment(fullname + "-coordinator")
	if trunk == nil || expert == nil || coord == nil {
		t.Fatalf("trunk StatefulSet %v, expert StatefulSet %v, coordinator Deployment %v", trunk != nil, expert != nil, coord != nil)
	}
	for name, got := range map[string]int32{"trunk": ptrVal(trunk.Spec.Replicas, 1), "expert": ptrVal(expert.Spec.Replicas, 1), "coordinator": ptrVal(coord.Spec.Replicas, 1)} {
		want := map[string]int32{"trunk": v.trunks, "expert": v.experts, "coordinator": v.coordinators}[name]
		if name == "trunk" && v.keda {
			continue // checkAutoscaling: KEDA owns it
		}
		if got != want {
			t.Errorf("%s replicas %d, want %d", name, got, want)
		}
	}
	if m.service(fullname+"-trunk-headless") == nil || m.service(fullname+"-expert-headless") == nil || m.service(fullname+"-trunk") == nil {
		t.Errorf("trunk and expert headless Services and the client Service are required")
	}
	for _, name := range []string{"trunk", "expert", "coordinator"} {
		if !slices.ContainsFunc(m.pdbs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == fullname+"-"+name }) {
			t.Errorf("no PodDisruptionBudget for %s", name)
		}
	}

	checkEtcd(t, m, v)
	checkGPU(t, expert, v)
	checkTLS(t, trunk, expert, v)

	if got := len(m.serviceMonitors); got != map[bool]int{true: 1}[v.serviceMonitor] {
		t.Errorf("%d ServiceMonitors, want serviceMonitor=%v", got, v.serviceMonitor)
	}
	if s := m.secret(fullname + "-secrets"); (s != nil) != v.generatedSecret {
		t.Errorf("generated Secret present = %v, want %v", s != nil, v.generatedSecret)
	} else if s != nil {
		for _, k := range []string{"gossip-key", "api-token"} {
			if len(s.Data[k]) < 16 {
				t.Errorf("Secret key %s: %d bytes", k, len(s.Data[k]))
			}
		}
	}
	for _, name := range []string{"trunk", "expert"} {
		s := m.statefulSet(fullname + "-" + name)
		if slices.ContainsFunc(s.Spec.VolumeClaimTemplates, func(c corev1.PersistentVolumeClaim) bool { return c.Name == "model" }) {
			t.Errorf("%s: a per-pod model volumeClaimTemplate (the cache is model.cache now)", name)
		}
	}
	checkModel(t, m, v)
	checkAutoscaling(t, m, v)
	checkPrometheusRule(t, m, v)
	checkDashboard(t, m)
}

func checkEtcd(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	etcd := m.statefulSet(fullname + "-etcd")
	if v.etcdMembers == 0 {
		if etcd != nil {
			t.Errorf("external etcd: the chart's etcd StatefulSet must not be rendered")
		}
	} else {
		if etcd == nil {
			t.Fatalf("etcd StatefulSet missing")
		}
		if got := ptrVal(etcd.Spec.Replicas, 1); int(got) != v.etcdMembers {
			t.Errorf("etcd replicas %d, want %d", got, v.etcdMembers)
		}
		c := container(&etcd.Spec.Template.Spec, "etcd")
		var members []string
		for i := range v.etcdMembers {
			members = append(members, fmt.Sprintf("%s-etcd-%d=http://%s-etcd-%d.%s.%s.svc.cluster.local:2380", fullname, i, fullname, i, etcd.Spec.ServiceName, namespace))
		}
		for f, want := range map[string]string{
			"initial-cluster":             strings.Join(members, ","),
			"name":                        "$(POD_NAME)",
			"initial-advertise-peer-urls": fmt.Sprintf("http://$(POD_NAME).%s.%s.svc.cluster.local:2380", etcd.Spec.ServiceName, namespace),
			"advertise-client-urls":       fmt.Sprintf("http://$(POD_NAME).%s.%s.svc.cluster.local:2379", etcd.Spec.ServiceName, namespace),
			"initial-cluster-state":       "new",
		} {
			if got, _ := flagValue(c.Args, f); got != want {
				t.Errorf("etcd --%s=%s, want %s", f, got, want)
			}
		}
		if etcd.Spec.PodManagementPolicy != "Parallel" {
			t.Errorf("etcd podManagementPolicy %q: members must start together", etcd.Spec.PodManagementPolicy)
		}
		if len(etcd.Spec.VolumeClaimTemplates) != 1 || etcd.Spec.VolumeClaimTemplates[0].Name != "data" {
			t.Errorf("etcd: a data volumeClaimTemplate expected")
		}
		if a := etcd.Spec.Template.Spec.Affinity; a == nil || a.PodAntiAffinity == nil {
			t.Errorf("etcd: pod anti-affinity expected")
		}
		if !slices.ContainsFunc(m.pdbs, func(p *policyv1.PodDisruptionBudget) bool { return p.Name == fullname+"-etcd" }) {
			t.Errorf("etcd: no PodDisruptionBudget")
		}
	}
	for _, w := range m.workloads() {
		if w.name == fullname+"-etcd" {
			continue
		}
		mounted := slices.ContainsFunc(w.tpl.Spec.Volumes, func(vol corev1.Volume) bool { return vol.Name == "etcd-tls" })
		if mounted != v.etcdTLS {
			t.Errorf("%s: etcd client TLS mounted = %v, want %v", w.name, mounted, v.etcdTLS)
		}
	}
}

// checkGPU: expert pods request the GPUs (and land on GPU nodes) exactly when
// GPUs are enabled; no pod asks for them otherwise.
func checkGPU(t *testing.T, expert *appsv1.StatefulSet, v *variant) {
	t.Helper()
	spec := &expert.Spec.Template.Spec
	c := container(spec, "expert")
	gpu := corev1.ResourceName("nvidia.com/gpu")
	if v.gpus > 0 {
		q, ok := c.Resources.Limits[gpu]
		if !ok || q.Value() != v.gpus {
			t.Errorf("expert: limits[%s] = %v, want %d", gpu, q.String(), v.gpus)
		}
		if r, ok := c.Resources.Requests[gpu]; ok && r.Value() != v.gpus {
			t.Errorf("expert: requests[%s] = %s differs from the limit", gpu, r.String())
		}
		if spec.NodeSelector["nvidia.com/gpu.present"] != "true" {
			t.Errorf("expert: GPU node selector missing: %v", spec.NodeSelector)
		}
		if !slices.ContainsFunc(spec.Tolerations, func(tl corev1.Toleration) bool { return tl.Key == "nvidia.com/gpu" }) {
			t.Errorf("expert: GPU toleration missing: %v", spec.Tolerations)
		}
		// The expert node computes on the GPU, from the GPU image.
		if got, _ := flagValue(c.Args, "device"); got != "cuda:0" {
			t.Errorf("expert: --device=%q, want cuda:0", got)
		}
		if got, _ := flagValue(c.Args, "gpu-memory"); got != "0.9" {
			t.Errorf("expert: --gpu-memory=%q, want 0.9", got)
		}
		if !strings.HasSuffix(c.Image, "-cuda") {
			t.Errorf("expert: image %s, want the -cuda image", c.Image)
		}
	} else {
		if _, ok := flagValue(c.Args, "device"); ok {
			t.Errorf("expert: --device with GPUs disabled: %v", c.Args)
		}
		if strings.HasSuffix(c.Image, "-cuda") {
			t.Errorf("expert: image %s with GPUs disabled, want the static image", c.Image)
		}
		for _, cc := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
			for name := range cc.Resources.Limits {
				if strings.Contains(string(name), "gpu") {
					t.Errorf("expert container %s: GPU limit %s with GPUs disabled", cc.Name, name)
				}
			}
			for name := range cc.Resources.Requests {
				if strings.Contains(string(name), "gpu") {
					t.Errorf("expert container %s: GPU request %s with GPUs disabled", cc.Name, name)
				}
			}
		}
		for k := range spec.NodeSelector {
			if strings.Contains(k, "gpu") {
				t.Errorf("expert: GPU node selector %s with GPUs disabled", k)
			}
		}
		if len(spec.Tolerations) > 0 {
			t.Errorf("expert: tolerations %v with GPUs disabled", spec.Tolerations)
		}
	}
	if got := ptrVal(spec.RuntimeClassName, ""); got != v.runtimeClass {
		t.Errorf("expert runtimeClassName %q, want %q", got, v.runtimeClass)
	}
}

func checkTLS(t *testing.T, trunk, expert *appsv1.StatefulSet, v *variant) {
	t.Helper()
	tc := container(&trunk.Spec.Template.Spec, "trunk")
	ec := container(&expert.Spec.Template.Spec, "expert")
	for _, f := range []string{"tls-cert", "tls-key", "tls-ca"} {
		if _, ok := flagValue(tc.Args, f); ok != v.publicTLS {
			t.Errorf("trunk --%s present = %v, want %v", f, ok, v.publicTLS)
		}
	}
	for _, c := range []*corev1.Container{tc, ec} {
		for _, f := range []string{"peer-tls-cert", "peer-tls-key", "peer-tls-ca"} {
			if _, ok := flagValue(c.Args, f); ok != v.peerTLS {
				t.Errorf("%s --%s present = %v, want %v", c.Name, f, ok, v.peerTLS)
			}
		}
	}
	// Kubernetes gRPC probes speak plaintext: a TLS port needs TCP checks. An
	// expert node with peer TLS serves the health service alone in plaintext
	// (--health-listen) and keeps gRPC probes there.
	healthPort := int32(0)
	if v.peerTLS {
		hl, ok := flagValue(ec.Args, "health-listen")
		if !ok {
			t.Errorf("expert: peer TLS without --health-listen: its probes could only connect, not ask whether the experts are loaded")
		}
		for _, p := range ec.Ports {
			if fmt.Sprintf(":%d", p.ContainerPort) == hl {
				healthPort = p.ContainerPort
			}
		}
		if healthPort == 0 || healthPort == 7071 {
			t.Errorf("expert: --health-listen=%s is not a separate container port", hl)
		}
	}
	for c, tls := range map[*corev1.Container]bool{tc: v.publicTLS, ec: v.peerTLS} {
		for _, p := range []*corev1.Probe{c.StartupProbe, c.LivenessProbe, c.ReadinessProbe} {
			if p == nil {
				continue
			}
			plainHealth := c == ec && healthPort != 0 && p.GRPC != nil && p.GRPC.Port == healthPort
			if tls && p.GRPC != nil && !plainHealth {
				t.Errorf("%s: gRPC probe on a TLS port", c.Name)
			}
			if (!tls || c == ec) && p.GRPC == nil {
				t.Errorf("%s: a plaintext (health) port should get gRPC health probes", c.Name)
			}
		}
		if r := c.ReadinessProbe; c == ec && r != nil && r.GRPC != nil && ptrVal(r.GRPC.Service, "") != "switchyard.v1.ExpertService" {
			t.Errorf("expert: readiness asks for service %q, want switchyard.v1.ExpertService (SERVING once its experts are loaded)", ptrVal(r.GRPC.Service, ""))
		}
	}
}

// dashboardMetrics are the series the dashboard must chart.
var dashboardMetrics = []string{"switchyard_time_to_first_token_seconds", "switchyard_inter_token_latency_seconds",
	"switchyard_request_duration_seconds", "switchyard_queue_wait_seconds", "switchyard_dispatch_rtt_seconds",
	"switchyard_expert_activations_total", "switchyard_placement_imbalance", "switchyard_placement_predicted_imbalance",
	"switchyard_session_state_bytes", "switchyard_session_transfers_total", "switchyard_expert_gpu_memory_bytes",
	"switchyard_expert_gpu_kernel_seconds", "switchyard_prompt_tokens_total", "switchyard_generated_tokens_total",
	"switchyard_api_requests_total", "switchyard_sessions", "switchyard_session_budget_usage_ratio", "switchyard_dispatch_wait_seconds_total",
	"switchyard_state_pool_bytes"}

// opsPanels are the operations row's panels and a series each must query.
var opsPanels = map[string][]string{
	"Throughput":        {"rate(switchyard_prompt_tokens_total", "rate(switchyard_generated_tokens_total"},
	"Requests by code":  {"by (code)", "switchyard_api_requests_total"},
	"Sessions":          {"switchyard_sessions", "running", "waiting"},
	"Memory-budget use": {"switchyard_session_budget_usage_ratio"},
	"Expert imbalance":  {"switchyard_placement_imbalance"},
}

func checkDashboard(t *testing.T, m *manifests) {
	t.Helper()
	var cm *corev1.ConfigMap
	for _, c := range m.configMaps {
		if c.Name == fullname+"-dashboard" {
			cm = c
		}
	}
	if cm == nil {
		t.Fatalf("dashboard ConfigMap missing")
	}
	if cm.Labels["grafana_dashboard"] != "1" {
		t.Errorf("dashboard ConfigMap: label grafana_dashboard=\"1\" missing: %v", cm.Labels)
	}
	checkDashboardJSON(t, cm.Data["switchyard.json"])
}

func checkDashboardJSON(t *testing.T, data string) {
	t.Helper()
	var d struct {
		UID        string `json:"uid"`
		Title      string `json:"title"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			GridPos struct {
				Y int `json:"y"`
			} `json:"gridPos"`
			Targets []struct {
				Expr     string `json:"expr"`
				Exemplar bool   `json:"exemplar"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal([]byte(data), &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if d.UID == "" || d.Title == "" || len(d.Panels) == 0 {
		t.Fatalf("dashboard: uid %q title %q, %d panels", d.UID, d.Title, len(d.Panels))
	}
	var exprs []string
	types := map[string]bool{}
	opsRow, nextRow := -1, -1 // y of the Operations row and of the row after it
	for _, p := range d.Panels {
		types[p.Type] = true
		if p.Type == "row" {
			if p.Title == "Operations" {
				opsRow = p.GridPos.Y
			} else if opsRow >= 0 && nextRow < 0 && p.GridPos.Y > opsRow {
				nextRow = p.GridPos.Y
			}
		}
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
			if err := checkPromQL(tg.Expr); err != nil {
				t.Errorf("dashboard panel %q: %v", p.Title, err)
			}
			// Latency panels show exemplars (trace ids on the histograms).
			if strings.Contains(tg.Expr, "histogram_quantile") && !tg.Exemplar {
				t.Errorf("dashboard panel %q: exemplars are off on %q", p.Title, tg.Expr)
			}
		}
	}
	for _, v := range d.Templating.List {
		for _, name := range seriesRE.FindAllString(v.Definition, -1) {
			if !exportedMetric(name) {
				t.Errorf("dashboard variable query %q: %s is not a series the binary exports", v.Definition, name)
			}
		}
	}
	if opsRow < 0 {
		t.Errorf("dashboard: no Operations row")
	}
	for prefix, wants := range opsPanels {
		found := false
		for _, p := range d.Panels {
			if p.Type == "row" || !strings.HasPrefix(p.Title, prefix) || p.GridPos.Y <= opsRow || (nextRow >= 0 && p.GridPos.Y >= nextRow) {
				continue
			}
			found = true
			var all []string
			for _, tg := range p.Targets {
				all = append(all, tg.Expr)
			}
			for _, w := range wants {
				if !strings.Contains(strings.Join(all, "\n"), w) {
					t.Errorf("dashboard Operations panel %q: no query with %q", p.Title, w)
				}
			}
		}
		if !found {
			t.Errorf("dashboard: the Operations row has no %q panel", prefix)
		}
	}
	all := strings.Join(exprs, "\n")
	for _, name := range dashboardMetrics {
		if !strings.Contains(all, name) {
			t.Errorf("dashboard: no panel queries %s", name)
		}
	}
	if !strings.Contains(all, "by (le, node)") {
		t.Errorf("dashboard: routing latency must be broken down per expert node")
	}
	if !types["heatmap"] {
		t.Errorf("dashboard: the expert load panel must be a heatmap")
	}
}

func TestDashboardFile(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "switchyard.json"))
	if err != nil {
		t.Fatal(err)
	}
	checkDashboardJSON(t, string(data))
}

// TestBadValues: values.schema.json rejects bad values at lint, template (and
// so install/upgrade) time.
func TestBadValues(t *testing.T) {
	cases := []struct {
		name, values, want string
	}{
		{"replicas as a string", "experts:\n  replicas: two\n", "replicas"},
		{"unknown top-level key", "replicaCount: 3\n", "replicaCount"},
		{"misspelt nested key", "trunk:\n  drainTimeout: 30\n", "drainTimeout"},
		{"zero GPUs", "gpu:\n  count: 0\n", "count"},
		{"unknown model source", "model:\n  source: s3\n", "source"},
		{"even etcd members", "etcd:\n  internal:\n    replicas: 2\n", "replicas"},
		{"external etcd without endpoints", "etcd:\n  mode: external\n", "endpoints"},
		{"peer certificate validity", "tls:\n  peer:\n    generated:\n      validityDays: 0\n", "validityDays"},
		{"cert-manager duration", "tls:\n  peer:\n    certManager:\n      duration: 90d\n", "duration"},
		{"cert-manager issuer without a name", "tls:\n  peer:\n    certManager:\n      issuerRef:\n        kind: ClusterIssuer\n", "issuerRef"},
		{"no token for anyone", "auth:\n  sharedToken: false\n", "tokens"},
		{"short client token", "auth:\n  tokens:\n    clients:\n      billing: short\n", "billing"},
		{"space in a client identity", "auth:\n  tokens:\n    clients:\n      \"bill ing\": \"\"\n", "bill ing"},
		{"pvc source without a claim", "model:\n  source: pvc\n", "claimName"},
		{"bad duration", "trunk:\n  settings:\n    sessionTTL: 30 minutes\n", "sessionTTL"},
		{"model path climbing out", "model:\n  path: ../etc\n", "path"},
		{"short gossip key", "secrets:\n  gossipKey: c2hvcnQ=\n", "gossipKey"},
		{"negative drain", "trunk:\n  drainTimeoutSeconds: -1\n", "drainTimeoutSeconds"},
		{"port out of range", "trunk:\n  port: 70000\n", "port"},
		{"otel without an endpoint", "otel:\n  enabled: true\n", "endpoint"},
		{"unknown settings flag", "trunk:\n  settings:\n    maxBatch: 3\n", "maxBatch"},
		{"bad KV element type", "trunk:\n  settings:\n    kvDtype: q4_0\n", "kvDtype"},
		{"negative recurrent pool", "trunk:\n  settings:\n    statePoolBytes: -1\n", "statePoolBytes"},
		{"bad pull policy", "image:\n  pullPolicy: Sometimes\n", "pullPolicy"},
		// The Python/pip downloader is gone; its keys must not silently do nothing.
		{"removed pipPackages", "model:\n  download:\n    pipPackages: [huggingface_hub]\n", "pipPackages"},
		{"removed pipExtraArgs", "model:\n  download:\n    pipExtraArgs: [--index-url, https://pypi.example]\n", "pipExtraArgs"},
		{"removed downloader image", "model:\n  download:\n    image:\n      repository: python\n      tag: 3.13-slim\n", "image"},
		{"removed per-pod persistence", "model:\n  download:\n    persistence:\n      enabled: true\n", "persistence"},
		{"removed sizeLimit", "model:\n  download:\n    sizeLimit: 40Gi\n", "sizeLimit"},
		{"no short alias for the repo", "model:\n  hfRepo: ibm-granite/granite-4.0-h-tiny\n", "hfRepo"},
		{"unknown cache type", "model:\n  cache:\n    type: nfs\n", "type"},
		{"no claim to use", "model:\n  cache:\n    persistentVolumeClaim:\n      create: false\n", "existingClaim"},
		{"comma in an include glob", "model:\n  download:\n    allowPatterns: [\"a,b\"]\n", "allowPatterns"},
		{"revision climbing out", "model:\n  download:\n    revision: ../x\n", "revision"},
		{"log format", "logging:\n  format: xml\n", "format"},
		{"log level", "logging:\n  level: verbose\n", "level"},
		{"budget threshold over 1", "autoscaling:\n  keda:\n    budgetUsage:\n      threshold: \"1.5\"\n", "threshold"},
		{"numeric KEDA threshold", "autoscaling:\n  keda:\n    queueDepth:\n      threshold: 4\n", "threshold"},
		{"unknown gRPC code", "prometheusRule:\n  alerts:\n    errorRatio:\n      codes: [Oops]\n", "codes"},
		{"bad alert duration", "prometheusRule:\n  alerts:\n    expertDown:\n      for: 2 minutes\n", "for"},
		{"braces in the series selector", "metrics:\n  seriesSelector: '{namespace=\"x\"}'\n", "seriesSelector"},
		{"auth as a string", "auth:\n  enabled: \"yes\"\n", "enabled"},
	}
	dir := t.TempDir()
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := filepath.Join(dir, fmt.Sprintf("bad%d.yaml", i))
			if err := os.WriteFile(f, []byte(c.values), 0o644); err != nil {
				t.Fatal(err)
			}
			for _, cmd := range [][]string{
				{"lint", "--strict", "--kube-version", kubeVersion, chartDir, "-f", f},
				{"template", release, chartDir, "--kube-version", kubeVersion, "-f", f},
			} {
				out, err := helm(cmd...)
				if err == nil {
					t.Errorf("helm %s accepted:\n%s", cmd[0], c.values)
					continue
				}
				if !strings.Contains(out, "schema") || !strings.Contains(out, c.want) {
					t.Errorf("helm %s: the error should come from the schema and name %q:\n%s", cmd[0], c.want, out)
				}
			}
		})
	}
}

// TestFlagChecker shows that the flag check catches what it is meant to.
func TestFlagChecker(t *testing.T) {
	ok := [][]string{
		{"trunk", "--listen=:7070", "--node-id=trunk-0", "--max-running=8", "--drain-timeout=30s"},
		{"expert", "--listen=:7071", "--etcd=http://a:2379,http://b:2379"},
		{"coordinator", "--etcd=http://a:2379", "--model=/models"},
	}
	for _, args := range ok {
		if err := checkFlags(args); err != nil {
			t.Errorf("%v: %v", args, err)
		}
	}
	bad := map[string][]string{
		"flag provided but not defined": {"trunk", "--no-such-flag=1"},
		"invalid value":                 {"trunk", "--max-running=two"},
		"unexpected argument":           {"expert", "--listen", ":7071", "stray"},
		"unknown command":               {"no-such-role", "--listen=:1"},
	}
	for want, args := range bad {
		err := checkFlags(args)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: error %v, want one containing %q", args, err, want)
		}
	}
}
