package helmtest

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// noPythonRE matches any trace of the old Python/pip downloader.
var noPythonRE = regexp.MustCompile(`(?i)\bpip3?\b|python|huggingface[_-]hub|pypi`)

// coordinatorInclude is what a coordinator with a cache of its own fetches:
// config.json, or the .gguf model.path names.
func (v *variant) coordinatorInclude() string {
	switch {
	case strings.HasSuffix(v.modelSubPath, ".gguf"):
		return v.modelSubPath
	case v.modelSubPath != "":
		return v.modelSubPath + "/config.json"
	}
	return "config.json"
}

// checkModel checks model distribution: downloads run `switchyard download`
// from the Switchyard image (no Python, no package install), into the cache
// model.cache selects, which the serving containers mount read-only; the
// shared claim gets one download Job.
func checkModel(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	if loc := noPythonRE.FindStringIndex(m.raw); loc != nil {
		ctx := m.raw[max(0, loc[0]-80):min(len(m.raw), loc[1]+80)]
		t.Errorf("the rendered chart mentions %q (the downloader is `switchyard download`, no Python or pip):\n...%s...", m.raw[loc[0]:loc[1]], ctx)
	}
	trunk := m.statefulSet(fullname + "-trunk")
	image := container(&trunk.Spec.Template.Spec, "trunk").Image // the static Switchyard image
	pods := []struct {
		role string
		spec *corev1.PodSpec
	}{
		{"trunk", &trunk.Spec.Template.Spec},
		{"expert", &m.statefulSet(fullname + "-expert").Spec.Template.Spec},
		{"coordinator", &m.deployment(fullname + "-coordinator").Spec.Template.Spec},
	}
	var trunkArgs []string
	for _, p := range pods {
		where := p.role + " pod"
		main := container(p.spec, p.role)
		if mnt := volumeMount(main, "model"); mnt == nil || !mnt.ReadOnly || mnt.MountPath != "/models" {
			t.Errorf("%s: the serving container must mount the model volume read-only at /models: %+v", where, mnt)
		}
		vol := volume(p.spec, "model")
		if vol == nil {
			t.Errorf("%s: no model volume", where)
			continue
		}
		dl := initContainer(p.spec, "model-download")
		if !v.download {
			if dl != nil {
				t.Errorf("%s: model-download init container with model.source=%s", where, v.modelSource)
			}
			continue
		}
		if dl == nil {
			t.Errorf("%s: no model-download init container", where)
			continue
		}
		include := strings.Join(v.include, ",")
		if p.role == "coordinator" && v.cache != "persistentVolumeClaim" {
			include = v.coordinatorInclude()
		}
		checkDownloader(t, where+" init container model-download", dl, v, image, include)
		if p.role == "trunk" {
			trunkArgs = dl.Args
		}
		// The model volume is the cache.
		switch {
		case v.cache == "persistentVolumeClaim":
			if vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != v.cacheClaim || vol.PersistentVolumeClaim.ReadOnly {
				t.Errorf("%s: model volume must be the shared claim %s (writable by the init container): %+v", where, v.cacheClaim, vol.VolumeSource)
			}
		case v.cache == "hostPath" && p.role != "coordinator":
			if vol.HostPath == nil || vol.HostPath.Path != "/var/cache/switchyard/models" || ptrVal(vol.HostPath.Type, "") != corev1.HostPathDirectoryOrCreate {
				t.Errorf("%s: model volume must be the per-node hostPath cache: %+v", where, vol.VolumeSource)
			}
		default: // emptyDir cache, or the coordinator's own copy of config.json
			if vol.EmptyDir == nil || vol.EmptyDir.SizeLimit == nil {
				t.Errorf("%s: model volume must be a size-limited emptyDir: %+v", where, vol.VolumeSource)
			}
		}
	}

	// The download Job fills the shared claim; nothing else needs one.
	wantJob := v.download && v.cache == "persistentVolumeClaim"
	if got := len(m.jobs); got != map[bool]int{true: 1}[wantJob] {
		t.Fatalf("%d Jobs rendered, want a download Job = %v", got, wantJob)
	}
	for _, j := range m.jobs {
		where := "Job " + j.Name
		spec := &j.Spec.Template.Spec
		if !strings.HasPrefix(j.Name, fullname+"-model-") || len(spec.Containers) != 1 || len(spec.InitContainers) != 0 {
			t.Errorf("%s: want %s-model-<hash> with one container", where, fullname)
			continue
		}
		c := &spec.Containers[0]
		checkDownloader(t, where, c, v, image, strings.Join(v.include, ","))
		if !slices.Equal(c.Args, trunkArgs) {
			t.Errorf("%s: args %q differ from the pods' downloader %q (the pods would not find the Job's marker)", where, c.Args, trunkArgs)
		}
		if vol := volume(spec, "model"); vol == nil || vol.PersistentVolumeClaim == nil || vol.PersistentVolumeClaim.ClaimName != v.cacheClaim {
			t.Errorf("%s: must mount the shared claim %s", where, v.cacheClaim)
		}
		if spec.RestartPolicy != corev1.RestartPolicyOnFailure {
			t.Errorf("%s: restartPolicy %q, want OnFailure (a retry resumes)", where, spec.RestartPolicy)
		}
	}
	created := wantJob && v.cacheClaim == fullname+"-model-cache"
	if (m.pvc(fullname+"-model-cache") != nil) != created {
		t.Errorf("model cache claim rendered = %v, want %v", !created, created)
	}
}

// checkDownloader checks one `switchyard download` container: the Switchyard
// image and entrypoint, the repo, revision, folder and include list of the
// variant, the token Secret, and a writable mount of the cache at /models.
func checkDownloader(t *testing.T, where string, c *corev1.Container, v *variant, image, include string) {
	t.Helper()
	if c.Image != image {
		t.Errorf("%s: image %s, want the Switchyard image %s", where, c.Image, image)
	}
	if len(c.Command) != 0 || len(c.Args) == 0 || c.Args[0] != "download" {
		t.Fatalf("%s: want `switchyard download` (the image's entrypoint, args starting with download): command %q args %q", where, c.Command, c.Args)
	}
	for flag, want := range map[string]string{"repo": v.repo, "revision": v.revision, "dir": v.downloadDir(),
		"log-format": v.logFormat, "log-level": v.logLevel} {
		if got, _ := flagValue(c.Args, flag); got != want {
			t.Errorf("%s: --%s=%q, want %q", where, flag, got, want)
		}
	}
	if got, ok := flagValue(c.Args, "include"); got != include || (include == "") == ok {
		t.Errorf("%s: --include=%q (set %v), want %q", where, got, ok, include)
	}
	tok := envVar(c, "HF_TOKEN")
	if v.hfToken == "" {
		if tok != nil {
			t.Errorf("%s: HF_TOKEN set without model.download.token.existingSecret", where)
		}
	} else if name, key, _ := strings.Cut(v.hfToken, "/"); tok == nil || tok.ValueFrom == nil || tok.ValueFrom.SecretKeyRef == nil ||
		tok.ValueFrom.SecretKeyRef.Name != name || tok.ValueFrom.SecretKeyRef.Key != key {
		t.Errorf("%s: HF_TOKEN from Secret %s expected: %+v", where, v.hfToken, tok)
	}
	if mnt := volumeMount(c, "model"); mnt == nil || mnt.ReadOnly || mnt.MountPath != "/models" {
		t.Errorf("%s: must mount the model volume writable at /models: %+v", where, mnt)
	}
	if err := checkDownloadFlags(c.Args); err != nil {
		t.Errorf("%s: %v", where, err)
	}
}

var downloadCmd struct {
	once  sync.Once
	known bool
}

// checkDownloadFlags parses a downloader's args with the binary's own
// `download` flag set, like checkFlags does for the roles. A binary without
// the download subcommand skips the check (it is being added alongside).
func checkDownloadFlags(args []string) error {
	downloadCmd.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, _ := exec.CommandContext(ctx, switchyardBin, "download", "-h").CombinedOutput()
		downloadCmd.known = !strings.Contains(string(out), `unknown command "download"`)
		if !downloadCmd.known {
			fmt.Println("helmtest: the switchyard binary has no download subcommand yet; the downloaders' flags are not checked against it")
		}
	})
	if !downloadCmd.known {
		return nil
	}
	return checkFlags(args)
}

func volume(spec *corev1.PodSpec, name string) *corev1.Volume {
	for i := range spec.Volumes {
		if spec.Volumes[i].Name == name {
			return &spec.Volumes[i]
		}
	}
	return nil
}

func volumeMount(c *corev1.Container, name string) *corev1.VolumeMount {
	if c == nil {
		return nil
	}
	for i := range c.VolumeMounts {
		if c.VolumeMounts[i].Name == name {
			return &c.VolumeMounts[i]
		}
	}
	return nil
}

// checkAutoscaling: the KEDA ScaledObject exists exactly when enabled, scales
// the trunk StatefulSet (which then leaves replicas to KEDA) on the queue
// depth and memory-budget queries.
func checkAutoscaling(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	trunk := m.statefulSet(fullname + "-trunk")
	if !v.keda {
		if len(m.scaledObjects) != 0 {
			t.Errorf("a ScaledObject is rendered with autoscaling.keda.enabled=false")
		}
		if trunk.Spec.Replicas == nil {
			t.Errorf("trunk StatefulSet without replicas, but KEDA is off")
		}
		return
	}
	if len(m.scaledObjects) != 1 {
		t.Fatalf("%d ScaledObjects, want 1", len(m.scaledObjects))
	}
	so := m.scaledObjects[0]
	ref := so.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "StatefulSet" || ref.Name != trunk.Name {
		t.Errorf("ScaledObject %s: scaleTargetRef %+v, want apps/v1 StatefulSet %s", so.Name, ref, trunk.Name)
	}
	if trunk.Spec.Replicas != nil {
		t.Errorf("trunk StatefulSet sets replicas=%d while KEDA owns them (every upgrade would reset the scale)", *trunk.Spec.Replicas)
	}
	mn, mx := ptrVal(so.Spec.MinReplicaCount, 0), ptrVal(so.Spec.MaxReplicaCount, 0)
	if mn < 1 || mx < mn {
		t.Errorf("ScaledObject %s: replicas %d..%d", so.Name, mn, mx)
	}
	want := map[string]struct{ metricType, query string }{
		"queue-depth":   {"AverageValue", `sum(switchyard_sessions{state="waiting",`},
		"memory-budget": {"Value", `max(switchyard_session_budget_usage_ratio{`},
	}
	for _, tr := range so.Spec.Triggers {
		w, ok := want[tr.Name]
		if !ok || tr.Type != "prometheus" {
			t.Errorf("ScaledObject %s: unexpected trigger %s (%s)", so.Name, tr.Name, tr.Type)
			continue
		}
		delete(want, tr.Name)
		if tr.MetricType != w.metricType || !strings.HasPrefix(tr.Metadata["query"], w.query) {
			t.Errorf("trigger %s: metricType %s query %q, want %s and a query starting %q", tr.Name, tr.MetricType, tr.Metadata["query"], w.metricType, w.query)
		}
		if err := checkPromQL(tr.Metadata["query"]); err != nil {
			t.Errorf("trigger %s: %v", tr.Name, err)
		}
		if tr.Metadata["serverAddress"] == "" || tr.Metadata["threshold"] == "" {
			t.Errorf("trigger %s: serverAddress and threshold are required: %v", tr.Name, tr.Metadata)
		}
	}
	for name := range want {
		t.Errorf("ScaledObject %s: no %s trigger", so.Name, name)
	}
}

// alertRules returns the rendered alerting rules by name.
func alertRules(m *manifests) map[string]rule {
	out := map[string]rule{}
	for _, pr := range m.prometheusRules {
		for _, g := range pr.Spec.Groups {
			for _, r := range g.Rules {
				if r.Alert != "" {
					out[r.Alert] = r
				}
			}
		}
	}
	return out
}

// checkPrometheusRule: the PrometheusRule exists exactly when enabled and is
// a valid rule file (promtool when installed, structural checks always).
func checkPrometheusRule(t *testing.T, m *manifests, v *variant) {
	t.Helper()
	if got := len(m.prometheusRules); got != map[bool]int{true: 1}[v.prometheusRule] {
		t.Fatalf("%d PrometheusRules, want prometheusRule.enabled = %v", got, v.prometheusRule)
	}
	for _, pr := range m.prometheusRules {
		if err := validateRules(pr); err != nil {
			t.Errorf("PrometheusRule %s: %v", pr.Name, err)
		}
		promtoolCheck(t, pr)
	}
}

var (
	alertNameRE = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
	labelNameRE = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)
	promDurRE   = regexp.MustCompile(`^([0-9]+(ms|s|m|h|d|w|y))+$`)
)

// validateRules checks a PrometheusRule the way Prometheus' rule loader
// would, short of parsing PromQL: group names unique and set, every rule
// either an alert or a record with an expression, valid names and
// durations, balanced expressions without unrendered Helm templates, and
// annotation templates that are closed.
func validateRules(pr *prometheusRule) error {
	var errs []error
	if len(pr.Spec.Groups) == 0 {
		errs = append(errs, errors.New("no rule groups"))
	}
	groups := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		if g.Name == "" || groups[g.Name] {
			errs = append(errs, fmt.Errorf("group name %q empty or repeated", g.Name))
		}
		groups[g.Name] = true
		if len(g.Rules) == 0 {
			errs = append(errs, fmt.Errorf("group %s: no rules", g.Name))
		}
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			switch {
			case (r.Alert == "") == (r.Record == ""):
				errs = append(errs, fmt.Errorf("group %s: a rule must be exactly one of alert or record: %+v", g.Name, r))
			case !alertNameRE.MatchString(name):
				errs = append(errs, fmt.Errorf("rule %q: invalid name", name))
			}
			if r.For != "" && !promDurRE.MatchString(r.For) {
				errs = append(errs, fmt.Errorf("rule %s: for %q is not a Prometheus duration", name, r.For))
			}
			if err := checkPromQL(r.Expr); err != nil {
				errs = append(errs, fmt.Errorf("rule %s: %w", name, err))
			}
			for k := range r.Labels {
				if !labelNameRE.MatchString(k) {
					errs = append(errs, fmt.Errorf("rule %s: invalid label name %q", name, k))
				}
			}
			if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "") {
				errs = append(errs, fmt.Errorf("alert %s: severity label, summary and description annotations are required", name))
			}
			for k, a := range r.Annotations {
				if strings.Count(a, "{{") != strings.Count(a, "}}") {
					errs = append(errs, fmt.Errorf("alert %s: annotation %s has unbalanced {{ }}: %q", name, k, a))
				}
			}
		}
	}
	return errors.Join(errs...)
}

// checkPromQL is a light syntax check of a PromQL expression: balanced
// brackets and quotes, no leftover Helm template, no empty matcher list, and
// every switchyard_* series is one the binary exports (metricNames).
func checkPromQL(expr string) error {
	if strings.TrimSpace(expr) == "" {
		return errors.New("empty expression")
	}
	if strings.Contains(expr, "{{") || strings.Contains(expr, "<no value>") || strings.Contains(expr, "%!") {
		return fmt.Errorf("unrendered template or format error in %q", expr)
	}
	var stack []rune
	inStr := false
	for _, r := range expr {
		if inStr {
			if r == '"' {
				inStr = false
			}
			continue
		}
		switch r {
		case '"':
			inStr = true
		case '(', '{', '[':
			stack = append(stack, r)
		case ')', '}', ']':
			open := map[rune]rune{')': '(', '}': '{', ']': '['}[r]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return fmt.Errorf("unbalanced %q in %q", r, expr)
			}
			stack = stack[:len(stack)-1]
		}
	}
	if inStr || len(stack) > 0 {
		return fmt.Errorf("unterminated string or bracket in %q", expr)
	}
	if strings.Contains(expr, "{}") || strings.Contains(expr, ",}") || strings.Contains(expr, "{,") || strings.Contains(expr, ",,") {
		return fmt.Errorf("empty label matcher in %q", expr)
	}
	for _, name := range seriesRE.FindAllString(expr, -1) {
		if !exportedMetric(name) {
			return fmt.Errorf("%s is not a series the switchyard binary exports", name)
		}
	}
	return nil
}

// promtoolCheck runs `promtool check rules` over the rule groups when
// promtool is installed (Debian: the prometheus package).
func promtoolCheck(t *testing.T, pr *prometheusRule) {
	t.Helper()
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Log("promtool not installed: the rules were checked structurally only")
		return
	}
	f := t.TempDir() + "/rules.yaml"
	if err := writeYAML(f, map[string]any{"groups": pr.Spec.Groups}); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "rules", f).CombinedOutput(); err != nil {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}
