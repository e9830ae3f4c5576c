package helmtest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// noProbesAnnotation on a pod template names the containers allowed to run
// without probes and why ("<container>: <reason>").
const noProbesAnnotation = "switchyard.io/no-probes"

// switchyardRoles maps the container name of each Switchyard role to its
// subcommand.
var switchyardRoles = map[string]string{"trunk": "trunk", "expert": "expert", "coordinator": "coordinator"}

// checkCommon runs the checks every rendering must pass, whatever the values.
func checkCommon(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	checkLabels(t, m)
	checkWorkloads(t, m, v)
	checkServices(t, m)
	checkPDBs(t, m)
	checkServiceMonitors(t, m)
	checkJobs(t, m, v)
}

// checkJobs: Job pods pass the same pod checks as the workloads'.
func checkJobs(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	for _, j := range m.jobs {
		where := "Job " + j.Name
		spec := &j.Spec.Template.Spec
		if spec.RestartPolicy != corev1.RestartPolicyOnFailure && spec.RestartPolicy != corev1.RestartPolicyNever {
			t.Errorf("%s: restartPolicy %q", where, spec.RestartPolicy)
		}
		if sa := spec.ServiceAccountName; sa != "" && sa != "default" && !slices.ContainsFunc(m.serviceAccounts, func(s *corev1.ServiceAccount) bool { return s.Name == sa }) {
			t.Errorf("%s: ServiceAccount %q is not rendered", where, sa)
		}
		// A Job's pods are named <job>-<5 characters>, within 63.
		if len(j.Name) > 63-6 {
			t.Errorf("%s: name longer than %d characters", where, 63-6)
		}
		checkPodSecurity(t, where, spec)
		checkVolumes(t, m, v, where, podTemplate{kind: "Job", name: j.Name, tpl: &j.Spec.Template})
		for i := range spec.Containers {
			c := &spec.Containers[i]
			checkResources(t, where+" container "+c.Name, c)
			if err := checkEnvRefs(m, v, c, nil); err != nil {
				t.Errorf("%s container %s: %v", where, c.Name, err)
			}
		}
	}
}

func checkLabels(t *testing.T, m *manifests) {
	t.Helper()
	for _, o := range m.objects {
		l := o.meta.Labels
		if l["app.kubernetes.io/instance"] != release || l["app.kubernetes.io/name"] != "switchyard" || l["app.kubernetes.io/managed-by"] != "Helm" {
			t.Errorf("%s %s: missing standard labels: %v", o.kind, o.meta.Name, l)
		}
	}
}

func checkWorkloads(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	if len(m.workloads()) == 0 {
		t.Fatal("no Deployments or StatefulSets rendered")
	}
	for _, w := range m.workloads() {
		where := w.kind + " " + w.name
		spec := &w.tpl.Spec
		sel, err := metav1.LabelSelectorAsSelector(w.selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(w.tpl.Labels)) {
			t.Errorf("%s: selector %v does not match its pod template labels %v (%v)", where, w.selector, w.tpl.Labels, err)
		}
		if sa := spec.ServiceAccountName; sa != "" && sa != "default" && !slices.ContainsFunc(m.serviceAccounts, func(s *corev1.ServiceAccount) bool { return s.Name == sa }) {
			t.Errorf("%s: ServiceAccount %q is not rendered", where, sa)
		}
		checkPodSecurity(t, where, spec)
		checkVolumes(t, m, v, where, w)
		exempt := probeExemptions(w.tpl)
		for name := range exempt {
			if !slices.Contains(v.probeExempt, name) {
				t.Errorf("%s: container %q is exempted from probes (%s) but the variant does not expect that", where, name, exempt[name])
			}
		}
		for i := range spec.Containers {
			c := &spec.Containers[i]
			cwhere := fmt.Sprintf("%s container %s", where, c.Name)
			if _, ok := exempt[c.Name]; !ok {
				if c.LivenessProbe == nil || c.ReadinessProbe == nil {
					t.Errorf("%s: liveness and readiness probes are required (liveness %v, readiness %v)", cwhere, c.LivenessProbe != nil, c.ReadinessProbe != nil)
				}
			} else if c.LivenessProbe != nil || c.ReadinessProbe != nil {
				t.Errorf("%s: has probes but is annotated %s", cwhere, noProbesAnnotation)
			}
			for kind, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
				if err := checkProbe(c, p); err != nil {
					t.Errorf("%s: %s probe: %v", cwhere, kind, err)
				}
			}
			checkResources(t, cwhere, c)
			if _, ok := switchyardRoles[c.Name]; ok {
				checkSwitchyardContainer(t, m, v, w, c) // checks the env references too
			} else if err := checkEnvRefs(m, v, c, nil); err != nil {
				t.Errorf("%s: %v", cwhere, err)
			}
		}
		for i := range spec.InitContainers {
			c := &spec.InitContainers[i]
			checkResources(t, where+" init container "+c.Name, c)
			if err := checkEnvRefs(m, v, c, nil); err != nil {
				t.Errorf("%s init container %s: %v", where, c.Name, err)
			}
		}
		if w.sts != nil {
			svc := m.service(w.sts.Spec.ServiceName)
			switch {
			case svc == nil:
				t.Errorf("%s: serviceName %q is not rendered", where, w.sts.Spec.ServiceName)
			case svc.Spec.ClusterIP != corev1.ClusterIPNone:
				t.Errorf("%s: serviceName %q is not headless", where, svc.Name)
			case !svc.Spec.PublishNotReadyAddresses:
				t.Errorf("%s: headless Service %q must publish not-ready addresses (peers find each other before they are ready)", where, svc.Name)
			case !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(w.tpl.Labels)):
				t.Errorf("%s: headless Service %q does not select its pods", where, svc.Name)
			}
		}
	}
}

func probeExemptions(tpl *corev1.PodTemplateSpec) map[string]string {
	out := map[string]string{}
	if a, ok := tpl.Annotations[noProbesAnnotation]; ok {
		for _, part := range strings.Split(a, ";") {
			name, reason, _ := strings.Cut(part, ":")
			out[strings.TrimSpace(name)] = strings.TrimSpace(reason)
		}
	}
	return out
}

// checkProbe checks that a probe has exactly one handler and that its port
// exists on the container.
func checkProbe(c *corev1.Container, p *corev1.Probe) error {
	if p == nil {
		return nil
	}
	h := p.ProbeHandler
	n := 0
	for _, set := range []bool{h.Exec != nil, h.HTTPGet != nil, h.TCPSocket != nil, h.GRPC != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return fmt.Errorf("%d handlers, want 1", n)
	}
	switch {
	case h.GRPC != nil:
		if !hasPort(c, intstr.FromInt32(h.GRPC.Port)) {
			return fmt.Errorf("grpc port %d is not a container port", h.GRPC.Port)
		}
	case h.HTTPGet != nil:
		if !hasPort(c, h.HTTPGet.Port) {
			return fmt.Errorf("http port %s is not a container port", h.HTTPGet.Port.String())
		}
	case h.TCPSocket != nil:
		if !hasPort(c, h.TCPSocket.Port) {
			return fmt.Errorf("tcp port %s is not a container port", h.TCPSocket.Port.String())
		}
	}
	if p.PeriodSeconds < 1 || p.FailureThreshold < 1 {
		return fmt.Errorf("periodSeconds %d, failureThreshold %d", p.PeriodSeconds, p.FailureThreshold)
	}
	return nil
}

func hasPort(c *corev1.Container, port intstr.IntOrString) bool {
	for _, p := range c.Ports {
		if (port.Type == intstr.String && p.Name == port.StrVal) || (port.Type == intstr.Int && p.ContainerPort == port.IntVal) {
			return true
		}
	}
	return false
}

func checkPodSecurity(t *testing.T, where string, spec *corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod securityContext.runAsNonRoot must be true", where)
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Errorf("%s: pod runs as uid 0", where)
	}
	podSeccomp := psc != nil && psc.SeccompProfile != nil && psc.SeccompProfile.Type == corev1.SeccompProfileTypeRuntimeDefault
	if spec.HostNetwork || spec.HostPID || spec.HostIPC {
		t.Errorf("%s: uses host namespaces", where)
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for i := range all {
		c := &all[i]
		sc := c.SecurityContext
		cw := where + " container " + c.Name
		if sc == nil {
			t.Errorf("%s: no securityContext", cw)
			continue
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("%s: allowPrivilegeEscalation must be false", cw)
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("%s: readOnlyRootFilesystem must be true", cw)
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Errorf("%s: privileged", cw)
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Errorf("%s: capabilities must drop ALL and add none: %+v", cw, sc.Capabilities)
		}
		if sc.RunAsNonRoot != nil && !*sc.RunAsNonRoot {
			t.Errorf("%s: runAsNonRoot false", cw)
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			t.Errorf("%s: runs as uid 0", cw)
		}
		if !podSeccomp && (sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault) {
			t.Errorf("%s: seccompProfile RuntimeDefault is required (pod or container)", cw)
		}
	}
}

func checkResources(t *testing.T, where string, c *corev1.Container) {
	t.Helper()
	if _, ok := c.Resources.Requests[corev1.ResourceMemory]; !ok {
		t.Errorf("%s: no memory request", where)
	}
	if _, ok := c.Resources.Requests[corev1.ResourceCPU]; !ok {
		t.Errorf("%s: no cpu request", where)
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Errorf("%s: no memory limit", where)
	}
}

// checkVolumes: every mount names a volume or a volumeClaimTemplate, and
// every Secret, ConfigMap and PVC a volume uses is rendered or expected to
// exist already (variant.external).
func checkVolumes(t *testing.T, m *manifests, v *variant, where string, w podTemplate) {
	t.Helper()
	spec := &w.tpl.Spec
	vols := map[string]bool{}
	for _, vol := range spec.Volumes {
		if vols[vol.Name] {
			t.Errorf("%s: volume %q twice", where, vol.Name)
		}
		vols[vol.Name] = true
		switch {
		case vol.Secret != nil:
			// A Secret a cert-manager Certificate of the chart writes counts as rendered.
			if m.secret(vol.Secret.SecretName) == nil && m.certificateFor(vol.Secret.SecretName) == nil && !v.isExternal("Secret", vol.Secret.SecretName) {
				t.Errorf("%s: volume %s: Secret %q is neither rendered nor declared external", where, vol.Name, vol.Secret.SecretName)
			}
		case vol.ConfigMap != nil:
			if m.configMap(vol.ConfigMap.Name) == nil && !v.isExternal("ConfigMap", vol.ConfigMap.Name) {
				t.Errorf("%s: volume %s: ConfigMap %q is neither rendered nor declared external", where, vol.Name, vol.ConfigMap.Name)
			}
		case vol.PersistentVolumeClaim != nil:
			if m.pvc(vol.PersistentVolumeClaim.ClaimName) == nil && !v.isExternal("PersistentVolumeClaim", vol.PersistentVolumeClaim.ClaimName) {
				t.Errorf("%s: volume %s: PVC %q is neither rendered nor declared external", where, vol.Name, vol.PersistentVolumeClaim.ClaimName)
			}
		}
	}
	if w.sts != nil {
		for _, c := range w.sts.Spec.VolumeClaimTemplates {
			if vols[c.Name] {
				t.Errorf("%s: %q is both a volume and a volumeClaimTemplate", where, c.Name)
			}
			vols[c.Name] = true
		}
	}
	all := append(slices.Clone(spec.InitContainers), spec.Containers...)
	for _, c := range all {
		for _, vm := range c.VolumeMounts {
			if !vols[vm.Name] {
				t.Errorf("%s container %s: mount %q has no volume", where, c.Name, vm.Name)
			}
		}
	}
}

// checkEnvRefs: Secret and ConfigMap keys the environment uses exist, and
// every $(VAR) in command and args is defined before use (Kubernetes passes an
// undefined reference through literally). It returns the resolved
// environment in env when env is not nil.
func checkEnvRefs(m *manifests, v *variant, c *corev1.Container, env map[string]string) error {
	if env == nil {
		env = map[string]string{}
	}
	var errs []error
	for _, e := range c.Env {
		val := e.Value
		if vf := e.ValueFrom; vf != nil {
			switch {
			case vf.SecretKeyRef != nil:
				ref := vf.SecretKeyRef
				if s := m.secret(ref.Name); s != nil {
					if _, ok := s.Data[ref.Key]; !ok {
						if _, ok := s.StringData[ref.Key]; !ok {
							errs = append(errs, fmt.Errorf("env %s: Secret %s has no key %q", e.Name, ref.Name, ref.Key))
						}
					}
				} else if !v.isExternal("Secret", ref.Name) {
					errs = append(errs, fmt.Errorf("env %s: Secret %q is neither rendered nor declared external", e.Name, ref.Name))
				}
				val = "secret-value"
			case vf.ConfigMapKeyRef != nil:
				ref := vf.ConfigMapKeyRef
				if cm := m.configMap(ref.Name); cm != nil {
					if _, ok := cm.Data[ref.Key]; !ok {
						errs = append(errs, fmt.Errorf("env %s: ConfigMap %s has no key %q", e.Name, ref.Name, ref.Key))
					}
				} else if !v.isExternal("ConfigMap", ref.Name) {
					errs = append(errs, fmt.Errorf("env %s: ConfigMap %q is neither rendered nor declared external", e.Name, ref.Name))
				}
				val = "configmap-value"
			case vf.FieldRef != nil:
				switch vf.FieldRef.FieldPath {
				case "metadata.name":
					val = "pod-0"
				case "metadata.namespace":
					val = namespace
				default:
					val = "field"
				}
			default:
				val = "value"
			}
		}
		// A value may itself reference variables defined before it.
		exp, err := expand(val, env)
		if err != nil {
			errs = append(errs, fmt.Errorf("env %s: %w", e.Name, err))
		}
		env[e.Name] = exp
	}
	for _, a := range append(slices.Clone(c.Command), c.Args...) {
		if _, err := expand(a, env); err != nil {
			errs = append(errs, fmt.Errorf("arg %q: %w", a, err))
		}
	}
	return errors.Join(errs...)
}

var varRefRE = regexp.MustCompile(`\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)`)

// expand resolves $(VAR) references the way the kubelet does ($$ escapes a $).
func expand(s string, env map[string]string) (string, error) {
	var missing []string
	out := varRefRE.ReplaceAllStringFunc(s, func(ref string) string {
		if ref == "$$" {
			return "$"
		}
		name := ref[2 : len(ref)-1]
		val, ok := env[name]
		if !ok {
			missing = append(missing, name)
			return ref
		}
		return val
	})
	if len(missing) > 0 {
		return out, fmt.Errorf("undefined variables %v", missing)
	}
	return out, nil
}

// checkFlags parses args with the switchyard binary's own flag set: it runs
// `switchyard <args...> -h`. When every flag before -h is defined and its value
// parses, the flag package prints only the usage, whose first line is
// "Usage of switchyard <role>:", and the binary exits with 2 without doing
// anything else. Otherwise the first line is the parse error, e.g. "flag
// provided but not defined: -x" or `invalid value "two" for flag -max-running`;
// a stray positional argument turns -h into a positional one as well and
// yields "unexpected argument".
func checkFlags(args []string) error {
	if len(args) == 0 {
		return errors.New("no args")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, switchyardBin, append(slices.Clone(args), "-h")...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		return fmt.Errorf("switchyard %s -h: want exit status 2 (usage), got %v\n%s", strings.Join(args, " "), err, out)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	// The flag package's default usage, or a subcommand's own (`download`:
	// "usage: switchyard download --repo ID ...").
	if want := "Usage of switchyard " + args[0] + ":"; first != want && !strings.HasPrefix(first, "usage: switchyard "+args[0]+" ") {
		return fmt.Errorf("switchyard rejected the args %q: %s", args, first)
	}
	return nil
}

// checkSwitchyardContainer checks a trunk, expert or coordinator container:
// its args parse with the binary's flag set and wire up what the role needs.
func checkSwitchyardContainer(t *testing.T, m *manifests, v *variant, w podTemplate, c *corev1.Container) {
	t.Helper()
	where := fmt.Sprintf("%s %s container %s", w.kind, w.name, c.Name)
	role := switchyardRoles[c.Name]
	if len(c.Command) != 0 {
		t.Errorf("%s: command %v overrides the image's /switchyard entrypoint", where, c.Command)
	}
	if len(c.Args) == 0 || c.Args[0] != role {
		t.Fatalf("%s: args must start with the subcommand %q: %v", where, role, c.Args)
	}
	if w.tpl.Labels["app.kubernetes.io/component"] != role {
		t.Errorf("%s: component label %q, want %q", where, w.tpl.Labels["app.kubernetes.io/component"], role)
	}
	env := map[string]string{}
	if err := checkEnvRefs(m, v, c, env); err != nil {
		t.Errorf("%s: %v", where, err)
	}
	args := make([]string, 0, len(c.Args))
	for _, a := range c.Args {
		exp, _ := expand(a, env)
		name, val, _ := strings.Cut(exp, "=")
		if slices.Contains(v.unknownFlags[role], name) {
			continue // wiring for a flag the binary does not have yet
		}
		if name == "--api-tokens-file" {
			// The binary reads the file while parsing its flags: give it the
			// file the pod would see (the rendered Secret's, or a stand-in
			// for an existing one), so its parser checks the content.
			exp = name + "=" + mountedFile(t, m, w, c, val)
		}
		args = append(args, exp)
	}
	if err := checkFlags(args); err != nil {
		t.Errorf("%s: %v", where, err)
	}

	required := map[string][]string{
		"trunk":       {"listen", "node-id", "advertise", "model", "etcd", "drain-timeout"},
		"expert":      {"listen", "node-id", "advertise", "model", "etcd"},
		"coordinator": {"etcd", "model"},
	}[role]
	for _, f := range required {
		if _, ok := flagValue(c.Args, f); !ok {
			t.Errorf("%s: --%s is required", where, f)
		}
	}
	if got, _ := flagValue(c.Args, "etcd"); got != strings.Join(v.etcdEndpoints(), ",") {
		t.Errorf("%s: --etcd=%s, want %s", where, got, strings.Join(v.etcdEndpoints(), ","))
	}
	model, _ := flagValue(c.Args, "model")
	if model != v.modelPath() {
		t.Errorf("%s: --model=%s, want %s", where, model, v.modelPath())
	}
	if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
		return vm.ReadOnly && (model == vm.MountPath || strings.HasPrefix(model, strings.TrimSuffix(vm.MountPath, "/")+"/"))
	}) {
		t.Errorf("%s: --model=%s is not under a read-only volume mount", where, model)
	}
	if role == "trunk" || role == "expert" {
		listen, _ := flagValue(c.Args, "listen")
		if !strings.HasPrefix(listen, ":") || !hasPort(c, intstr.Parse(listen[1:])) {
			t.Errorf("%s: --listen=%s must listen on all addresses on the container port", where, listen)
		}
		if !hasPort(c, intstr.FromString("grpc")) {
			t.Errorf("%s: no container port named grpc", where)
		}
		if id, _ := flagValue(c.Args, "node-id"); id != "$(POD_NAME)" {
			t.Errorf("%s: --node-id=%s, want the pod name (stable in a StatefulSet)", where, id)
		}
		adv, _ := flagValue(c.Args, "advertise")
		if w.sts == nil {
			t.Errorf("%s: must be a StatefulSet (stable identities)", where)
		} else if want := fmt.Sprintf("$(POD_NAME).%s.$(POD_NAMESPACE).svc.cluster.local%s", w.sts.Spec.ServiceName, listen); adv != want {
			t.Errorf("%s: --advertise=%s, want %s", where, adv, want)
		}
	}
	if v.metricsRoles()[role] {
		if got, ok := flagValue(c.Args, "metrics-addr"); !ok || got != ":9090" || !hasPort(c, intstr.FromString("metrics")) {
			t.Errorf("%s: metrics: --metrics-addr=%q and a port named metrics are expected", where, got)
		}
		if w.tpl.Annotations["prometheus.io/scrape"] != "true" || w.tpl.Annotations["prometheus.io/port"] != "9090" {
			t.Errorf("%s: prometheus.io annotations missing: %v", where, w.tpl.Annotations)
		}
		if _, ok := flagValue(c.Args, "enable-pprof"); ok != v.pprof {
			t.Errorf("%s: --enable-pprof given = %v, want %v (metrics.pprof)", where, ok, v.pprof)
		}
	} else if hasPort(c, intstr.FromString("metrics")) || w.tpl.Annotations["prometheus.io/scrape"] != "" {
		t.Errorf("%s: declares a metrics port or scrape annotations but serves no metrics", where)
	} else if _, ok := flagValue(c.Args, "enable-pprof"); ok {
		t.Errorf("%s: --enable-pprof without metrics (it serves on the metrics address)", where)
	}
	for _, name := range []string{"POD_NAME", "POD_NAMESPACE", "SWITCHYARD_GOSSIP_KEY"} {
		if envVar(c, name) == nil {
			t.Errorf("%s: env %s missing", where, name)
		}
	}
	if (envVar(c, "SWITCHYARD_API_TOKEN") != nil) != (role == "trunk" && v.auth && !v.clientTokensOnly) {
		t.Errorf("%s: SWITCHYARD_API_TOKEN must be set on trunk nodes only, and only with auth.enabled (%v) and the shared token kept (%v)", where, v.auth, !v.clientTokensOnly)
	}
	if _, ok := flagValue(c.Args, "api-tokens-file"); role == "trunk" && v.auth && v.clientTokensOnly && !ok {
		t.Errorf("%s: no shared token and no --api-tokens-file: no client could call the API", where)
	}
	// Logs: every role gets the shared logging flags.
	if got, _ := flagValue(c.Args, "log-format"); got != v.logFormat {
		t.Errorf("%s: --log-format=%q, want %q", where, got, v.logFormat)
	}
	if got, _ := flagValue(c.Args, "log-level"); got != v.logLevel {
		t.Errorf("%s: --log-level=%q, want %q", where, got, v.logLevel)
	}
	if (envVar(c, "OTEL_EXPORTER_OTLP_ENDPOINT") != nil) != v.otel {
		t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT set = %v, want %v", where, !v.otel, v.otel)
	}
	if v.otel {
		if e := envVar(c, "OTEL_SERVICE_NAME"); e == nil || e.Value != "switchyard-"+role {
			t.Errorf("%s: OTEL_SERVICE_NAME: %+v", where, e)
		}
	}
	dl := initContainer(&w.tpl.Spec, "model-download")
	if (dl != nil) != v.download {
		t.Errorf("%s: model-download init container present = %v, want %v", where, dl != nil, v.download)
	}
}

func checkServices(t *testing.T, m *manifests) {
	t.Helper()
	for _, s := range m.services {
		where := "Service " + s.Name
		if len(s.Spec.Selector) == 0 {
			t.Errorf("%s: no selector", where)
			continue
		}
		var pods []podTemplate
		for _, w := range m.workloads() {
			if labels.SelectorFromSet(s.Spec.Selector).Matches(labels.Set(w.tpl.Labels)) {
				pods = append(pods, w)
			}
		}
		if len(pods) == 0 {
			t.Errorf("%s: selector %v matches no pod template", where, s.Spec.Selector)
			continue
		}
		if len(pods) > 1 {
			t.Errorf("%s: selector %v matches several workloads", where, s.Spec.Selector)
		}
		for _, p := range s.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			found := false
			for _, w := range pods {
				for i := range w.tpl.Spec.Containers {
					if hasPort(&w.tpl.Spec.Containers[i], target) {
						found = true
					}
				}
			}
			if !found {
				t.Errorf("%s: port %s targets %s, which no selected container declares", where, p.Name, target.String())
			}
		}
	}
}

func checkPDBs(t *testing.T, m *manifests) {
	t.Helper()
	for _, p := range m.pdbs {
		sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("PodDisruptionBudget %s: bad selector (%v)", p.Name, err)
			continue
		}
		n := 0
		for _, w := range m.workloads() {
			if sel.Matches(labels.Set(w.tpl.Labels)) {
				n++
			}
		}
		if n != 1 {
			t.Errorf("PodDisruptionBudget %s: selects %d workloads, want 1", p.Name, n)
		}
		if (p.Spec.MinAvailable == nil) == (p.Spec.MaxUnavailable == nil) {
			t.Errorf("PodDisruptionBudget %s: set exactly one of minAvailable and maxUnavailable", p.Name)
		}
	}
}

func checkServiceMonitors(t *testing.T, m *manifests) {
	t.Helper()
	for _, sm := range m.serviceMonitors {
		sel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("ServiceMonitor %s: bad selector (%v)", sm.Name, err)
			continue
		}
		for _, ep := range sm.Spec.Endpoints {
			n := 0
			for _, s := range m.services {
				if sel.Matches(labels.Set(s.Labels)) && slices.ContainsFunc(s.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
					n++
				}
			}
			if n == 0 {
				t.Errorf("ServiceMonitor %s: no Service matches the selector with a port named %q", sm.Name, ep.Port)
			}
			for _, r := range ep.Relabelings {
				if r.TargetLabel == "node" {
					t.Errorf("ServiceMonitor %s: relabeling onto \"node\" clashes with Switchyard's own node label", sm.Name)
				}
			}
		}
	}
}
