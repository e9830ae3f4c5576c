package helmtest

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// seriesRE finds the Switchyard series a query names.
var seriesRE = regexp.MustCompile(`\bswitchyard_[a-z0-9_]*[a-z0-9]`)

// renamedMetrics are the old names of the latency histograms; nothing the
// chart ships may query them any more.
var renamedMetrics = map[string]string{
	"switchyard_ttft_seconds":  "switchyard_time_to_first_token_seconds",
	"switchyard_itl_seconds":   "switchyard_inter_token_latency_seconds",
	"switchyard_e2e_seconds":   "switchyard_request_duration_seconds",
	"switchyard_queue_seconds": "switchyard_queue_wait_seconds",
}

var exported struct {
	once  sync.Once
	names map[string]bool
	err   error
}

// exportedMetric reports whether name (or, for a histogram series, its base
// name without _bucket, _count or _sum) is a metric the switchyard binary
// defines: a "switchyard_..." string literal in the non-test Go files of the
// role and internal packages (the CLI and the load generator only read
// metrics, so they are left out).
func exportedMetric(name string) bool {
	exported.once.Do(func() {
		exported.names = map[string]bool{}
		lit := regexp.MustCompile(`"(switchyard_[a-z0-9_]+)"`)
		for _, dir := range []string{"trunk-node", "expert-node", "coordinator", "internal"} {
			err := filepath.WalkDir(filepath.Join(repoRoot, dir), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(repoRoot, path)
				if d.IsDir() && (rel == filepath.Join("internal", "cli") || d.Name() == "testdata") {
					return filepath.SkipDir
				}
				if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
					return nil
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				for _, m := range lit.FindAllStringSubmatch(string(b), -1) {
					exported.names[m[1]] = true
				}
				return nil
			})
			if err != nil {
				exported.err = err
			}
		}
	})
	if exported.err != nil {
		panic(exported.err)
	}
	if exported.names[name] {
		return true
	}
	for _, suffix := range []string{"_bucket", "_count", "_sum"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && exported.names[base] {
			return true
		}
	}
	return false
}

func writeYAML(path string, v any) error {
	b, err := yaml.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// TestMetricNames: the metrics the dashboard, the alerts and the KEDA
// triggers query exist in the binary, under their new names.
func TestMetricNames(t *testing.T) {
	for _, name := range append(slices.Clone(dashboardMetrics), "switchyard_sessions", "switchyard_session_budget_usage_ratio",
		"switchyard_api_requests_total", "switchyard_expert_ready", "switchyard_placement_predicted_imbalance") {
		if !exportedMetric(name) {
			t.Errorf("%s: no such metric in the switchyard sources", name)
		}
	}
	m := render(t, nil, []string{"autoscaling.keda.enabled=true", "prometheusRule.enabled=true"})
	dash, err := os.ReadFile(filepath.Join(chartDir, "dashboards", "switchyard.json"))
	if err != nil {
		t.Fatal(err)
	}
	for old, now := range renamedMetrics {
		if strings.Contains(m.raw, old) || strings.Contains(string(dash), old) {
			t.Errorf("%s was renamed %s: the chart still uses the old name", old, now)
		}
	}
}

// TestAutoscalingAndAlertsOff: KEDA and the PrometheusRule are off by default
// (their CRDs may not exist) and render when enabled.
func TestAutoscalingAndAlertsOff(t *testing.T) {
	m := render(t, nil, nil)
	if len(m.scaledObjects) != 0 || len(m.prometheusRules) != 0 {
		t.Errorf("defaults render %d ScaledObjects and %d PrometheusRules, want none", len(m.scaledObjects), len(m.prometheusRules))
	}
	v := defaults("on")
	v.keda, v.prometheusRule = true, true
	m = render(t, nil, []string{"autoscaling.keda.enabled=true", "prometheusRule.enabled=true"})
	checkAutoscaling(t, m, &v)
	checkPrometheusRule(t, m, &v)
	rules := alertRules(m)
	for name, want := range map[string][]string{
		"SwitchyardAPIErrorRatioHigh":       {"switchyard_api_requests_total", `code=~"Internal|Unavailable|DeadlineExceeded|Unknown|DataLoss|ResourceExhausted"`, "> 0.05"},
		"SwitchyardTimeToFirstTokenHigh":    {"histogram_quantile(0.99", "switchyard_time_to_first_token_seconds_bucket", "> 2"},
		"SwitchyardSessionBudgetNearlyFull": {"switchyard_session_budget_usage_ratio", "> 0.9"},
		"SwitchyardExpertNodeDown":          {"switchyard_expert_ready", "== 0", `up{`, fullname + "-expert-"},
		"SwitchyardExpertImbalanceHigh":     {"switchyard_placement_imbalance", `kind="observed"`},
		"SwitchyardPlacementImbalanceHigh":  {"switchyard_placement_predicted_imbalance"},
	} {
		r, ok := rules[name]
		if !ok {
			t.Errorf("alert %s missing", name)
			continue
		}
		for _, w := range want {
			if !strings.Contains(r.Expr, w) {
				t.Errorf("alert %s: expr %q lacks %q", name, r.Expr, w)
			}
		}
		if !strings.Contains(r.Expr, `namespace="`+namespace+`"`) {
			t.Errorf("alert %s: expr %q is not restricted to the release namespace", name, r.Expr)
		}
	}
	for name, want := range map[string]string{"SwitchyardSessionBudgetNearlyFull": "5m", "SwitchyardExpertNodeDown": "2m"} {
		if rules[name].For != want {
			t.Errorf("alert %s: for %q, want %s", name, rules[name].For, want)
		}
	}
}

// --- README and NOTES -------------------------------------------------------

// shellWords splits one shell command line into words: single and double
// quotes, backslash escapes, and a # comment at the start of a word.
func shellWords(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\'':
			j := strings.IndexByte(line[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("unterminated ' in %q", line)
			}
			cur.WriteString(line[i+1 : i+1+j])
			i += j + 1
			inWord = true
		case c == '"':
			j := i + 1
			for ; j < len(line) && line[j] != '"'; j++ {
				if line[j] == '\\' && j+1 < len(line) {
					j++
				}
				cur.WriteByte(line[j])
			}
			if j >= len(line) {
				return nil, fmt.Errorf("unterminated \" in %q", line)
			}
			i = j
			inWord = true
		case c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '#' && !inWord:
			i = len(line)
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// readmeSection returns README.md's "### Kubernetes" section.
func readmeSection(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := string(b)
	start := strings.Index(text, "\n### Kubernetes\n")
	if start < 0 {
		t.Fatal("README.md has no ### Kubernetes section")
	}
	sec := text[start+1:]
	if end := regexp.MustCompile(`\n##+ `).FindStringIndex(sec[4:]); end != nil {
		sec = sec[:end[0]+4]
	}
	return sec
}

// readmeCommands returns the commands of the ```bash blocks in README.md's
// "### Kubernetes" section, continuation lines joined, split into words.
func readmeCommands(t *testing.T) [][]string {
	t.Helper()
	sec := readmeSection(t)
	var cmds [][]string
	for _, block := range regexp.MustCompile("(?s)```bash\n(.*?)```").FindAllStringSubmatch(sec, -1) {
		joined := strings.ReplaceAll(block[1], "\\\n", " ")
		for _, line := range strings.Split(joined, "\n") {
			words, err := shellWords(line)
			if err != nil {
				t.Fatalf("README Kubernetes section: %v", err)
			}
			if len(words) > 0 {
				cmds = append(cmds, words)
			}
		}
	}
	return cmds
}

// helmInstall is one `helm install` of the README, parsed.
type helmInstall struct {
	line             string
	release, chart   string
	namespace        string
	files, sets      []string
	createsNamespace bool
}

func parseHelmInstall(words []string) (*helmInstall, error) {
	h := &helmInstall{line: strings.Join(words, " "), namespace: "default"}
	var pos []string
	for i := 2; i < len(words); i++ {
		w := words[i]
		name, val, hasVal := strings.Cut(w, "=")
		next := func() (string, error) {
			if hasVal {
				return val, nil
			}
			if i+1 >= len(words) {
				return "", fmt.Errorf("%s needs a value", w)
			}
			i++
			return words[i], nil
		}
		var err error
		switch {
		case !strings.HasPrefix(w, "-"):
			pos = append(pos, w)
		case name == "--set" || name == "--set-string":
			var s string
			if s, err = next(); err == nil {
				h.sets = append(h.sets, s)
			}
		case name == "-f" || name == "--values":
			var f string
			if f, err = next(); err == nil {
				h.files = append(h.files, filepath.Join(repoRoot, f))
			}
		case name == "-n" || name == "--namespace":
			h.namespace, err = next()
		case name == "--create-namespace":
			h.createsNamespace = true
		case name == "--wait" || name == "--atomic":
		case name == "--timeout":
			_, err = next()
		default:
			err = fmt.Errorf("flag %s: not one this test knows how to apply; teach parseHelmInstall", w)
		}
		if err != nil {
			return nil, err
		}
	}
	if len(pos) != 2 {
		return nil, fmt.Errorf("want `helm install RELEASE CHART`, got positional %q", pos)
	}
	h.release, h.chart = pos[0], pos[1]
	return h, nil
}

// makeImages returns the image names `make image` and `make image-cuda` build
// with the Makefile's defaults.
func makeImages(t *testing.T) (static, cuda string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	get := func(v string) string {
		m := regexp.MustCompile(`(?m)^` + v + `\s*\?=\s*(\S+)\s*$`).FindStringSubmatch(string(b))
		if m == nil {
			t.Fatalf("Makefile: no %s ?= default", v)
		}
		return m[1]
	}
	image, tag := get("IMAGE"), get("IMAGE_TAG")
	if !regexp.MustCompile(`(?m)^image-cuda:[\s\S]*?--target cuda -t \$\(IMAGE\):\$\(IMAGE_TAG\)-cuda`).Match(b) {
		t.Fatalf("Makefile: image-cuda no longer builds $(IMAGE):$(IMAGE_TAG)-cuda; update this test")
	}
	return image + ":" + tag, image + ":" + tag + "-cuda"
}

// TestREADMEKubernetes runs the README's Kubernetes commands as far as
// possible without a cluster: every `helm install` line is linted and
// rendered with exactly its flags; the images it deploys are the ones the
// README's `make` line builds; and the notes it prints carry the API token
// exactly when the rendering enables authentication.
func TestREADMEKubernetes(t *testing.T) {
	static, cuda := makeImages(t)
	var installs []*helmInstall
	targets := map[string]bool{}
	for _, words := range readmeCommands(t) {
		switch {
		case words[0] == "make":
			for _, w := range words[1:] {
				targets[w] = true
			}
		case len(words) > 1 && words[0] == "helm" && words[1] == "install":
			h, err := parseHelmInstall(words)
			if err != nil {
				t.Errorf("README: %s: %v", strings.Join(words, " "), err)
				continue
			}
			installs = append(installs, h)
		}
	}
	if len(installs) == 0 {
		t.Fatal("README's Kubernetes section has no `helm install` command")
	}
	for _, h := range installs {
		t.Run(h.line, func(t *testing.T) {
			if filepath.Clean(filepath.Join(repoRoot, h.chart)) != filepath.Clean(filepath.Join(repoRoot, "deploy", "helm", "switchyard")) {
				t.Fatalf("chart %s, want deploy/helm/switchyard", h.chart)
			}
			if h.namespace != "default" && !h.createsNamespace {
				t.Errorf("namespace %s is not created by the command (add --create-namespace)", h.namespace)
			}
			lint := append([]string{"lint", "--strict", "--kube-version", kubeVersion, chartDir}, helmArgs(h.files, h.sets)...)
			if out, err := helm(lint...); err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(lint, " "), err, out)
			}
			args := append([]string{"template", h.release, chartDir, "--namespace", h.namespace, "--kube-version", kubeVersion}, helmArgs(h.files, h.sets)...)
			out, err := helm(args...)
			if err != nil {
				t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			m, err := decode([]byte(out))
			if err != nil {
				t.Fatal(err)
			}

			// The images: what `make image` (and image-cuda for GPU expert nodes) builds.
			if !targets["image"] {
				t.Errorf("the README installs a locally built image but runs no `make image`")
			}
			for _, w := range m.workloads() {
				for _, c := range append(slices.Clone(w.tpl.Spec.InitContainers), w.tpl.Spec.Containers...) {
					if _, ok := switchyardRoles[c.Name]; !ok && c.Name != "model-download" {
						continue
					}
					want := static
					if c.Name == "expert" && strings.HasSuffix(c.Image, "-cuda") {
						want = cuda
						if !targets["image-cuda"] {
							t.Errorf("expert nodes run %s, but the README does not run `make image-cuda`", c.Image)
						}
					}
					if c.Image != want {
						t.Errorf("%s %s container %s: image %s, but `make image` builds %s: set image.repository and image.tag to match", w.kind, w.name, c.Name, c.Image, want)
					}
				}
			}
			notes := renderNotesFor(t, h)
			checkNotes(t, notes, m, h.release, h.namespace)
			// Token commands quoted in the section's text read the Secret key
			// the trunk nodes use.
			for _, span := range regexp.MustCompile("`(export SWITCHYARD_API_TOKEN=[^`]*)`").FindAllStringSubmatch(readmeSection(t), -1) {
				checkNotes(t, span[1]+"\ngrpcurl -plaintext -H \"authorization: Bearer $SWITCHYARD_API_TOKEN\" x list\nswitchyard generate --addr x --api-token \"$SWITCHYARD_API_TOKEN\"", m, h.release, h.namespace)
			}
		})
	}
}

// renderNotesFor renders the notes of one README install (its release name too).
func renderNotesFor(t *testing.T, h *helmInstall) string {
	t.Helper()
	if h.release != release {
		t.Fatalf("release %q: renderNotes renders release %q; keep the README's release name %q or extend renderNotes", h.release, release, release)
	}
	return renderNotes(t, h.namespace, h.files, h.sets)
}

// TestNotes checks the notes against the rendered auth settings with auth on
// (a generated or an existing Secret) and off.
func TestNotes(t *testing.T) {
	for _, sets := range [][]string{
		nil,
		{"auth.enabled=false"},
		{"secrets.existingSecret=switchyard-creds"},
		{"model.cache.type=emptyDir", "autoscaling.keda.enabled=true", "tls.public.enabled=true", "tls.public.existingSecret=pub"},
	} {
		t.Run(strings.Join(append([]string{"defaults"}, sets...), ","), func(t *testing.T) {
			m := render(t, nil, sets)
			checkNotes(t, renderNotes(t, namespace, nil, sets), m, release, namespace)
		})
	}
}

var tokenExportRE = regexp.MustCompile(`^export SWITCHYARD_API_TOKEN=\$\(kubectl -n (\S+) get secret (\S+) -o jsonpath='\{\.data\.([A-Za-z0-9_.-]+)\}' \| base64 -d( \| awk '([^']*)')?\)$`)

// The awk programs that pick one client's token out of a tokens file: a named
// client's, or the first client's.
var (
	awkClientRE = regexp.MustCompile(`^\$1=="([^"]+)" \{print \$2\}$`)
	awkFirst    = `!/^#/ && NF==2 {print $2; exit}`
)

// checkNotes checks the commands NOTES.txt prints: the API token is read from
// the very Secret key the trunk nodes use and passed by every API command
// exactly when the rendering enables authentication; the commands name the
// release's namespace and trunk Service; `switchyard generate` parses with
// the binary's flags.
func checkNotes(t *testing.T, notes string, m *manifests, rel, ns string) {
	t.Helper()
	trunkName := rel + "-switchyard-trunk"
	trunk := m.statefulSet(trunkName)
	if trunk == nil {
		t.Fatalf("no StatefulSet %s", trunkName)
	}
	tc := container(&trunk.Spec.Template.Spec, "trunk")
	tokenEnv := envVar(tc, "SWITCHYARD_API_TOKEN")
	// Per-client tokens: the Secret and key of the file --api-tokens-file names.
	var tokensVol *corev1.SecretVolumeSource
	tokensKey := ""
	if f, ok := flagValue(tc.Args, "api-tokens-file"); ok {
		if vol := volumeAt(&trunk.Spec.Template.Spec, tc, path.Dir(f)); vol != nil && vol.Secret != nil {
			tokensVol, tokensKey = vol.Secret, path.Base(f)
			for _, it := range vol.Secret.Items {
				if it.Path == tokensKey {
					tokensKey = it.Key
				}
			}
		} else {
			t.Errorf("trunk --api-tokens-file=%s is not in a Secret volume", f)
		}
	}
	auth := tokenEnv != nil || tokensVol != nil
	tokenSet, calls := false, 0
	for _, raw := range strings.Split(notes, "\n") {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "kubectl ") && !strings.HasPrefix(line, "kubectl -n "+ns+" ") {
			t.Errorf("notes: %q does not name namespace %s", line, ns)
		}
		if strings.HasPrefix(line, "kubectl -n "+ns+" port-forward ") && !strings.Contains(line, " svc/"+trunkName+" ") {
			t.Errorf("notes: %q does not forward to the trunk Service %s", line, trunkName)
		}
		if strings.HasPrefix(line, "export SWITCHYARD_API_TOKEN=") {
			mm := tokenExportRE.FindStringSubmatch(line)
			switch {
			case !auth:
				t.Errorf("notes: %q, but the trunk nodes require no token", line)
			case mm == nil:
				t.Errorf("notes: %q is not `export SWITCHYARD_API_TOKEN=$(kubectl -n NS get secret NAME -o jsonpath='{.data.KEY}' | base64 -d [| awk ...])`", line)
			case mm[4] != "":
				// One client's token out of the tokens file the trunks mount.
				if tokensVol == nil {
					t.Errorf("notes: %q reads a tokens file, but the trunks have none", line)
					break
				}
				if mm[1] != ns || mm[2] != tokensVol.SecretName || mm[3] != tokensKey {
					t.Errorf("notes read the token from %s/%s key %s; the trunks' tokens file is %s/%s key %s", mm[1], mm[2], mm[3], ns, tokensVol.SecretName, tokensKey)
				}
				if am := awkClientRE.FindStringSubmatch(mm[5]); am != nil {
					if s := m.secret(tokensVol.SecretName); s != nil && !strings.Contains("\n"+string(s.Data[tokensKey]), "\n"+am[1]+" ") {
						t.Errorf("notes read client %q's token, which the tokens file lacks", am[1])
					}
				} else if mm[5] != awkFirst {
					t.Errorf("notes: awk program %q picks no client's token", mm[5])
				}
			case tokenEnv == nil:
				t.Errorf("notes: %q reads the shared token, which the trunks do not accept (auth.sharedToken=false)", line)
			default:
				ref := tokenEnv.ValueFrom.SecretKeyRef
				if mm[1] != ns || mm[2] != ref.Name || mm[3] != ref.Key {
					t.Errorf("notes read the token from %s/%s key %s; the trunk nodes use %s/%s key %s", mm[1], mm[2], mm[3], ns, ref.Name, ref.Key)
				}
				if s := m.secret(ref.Name); s != nil {
					if _, ok := s.Data[ref.Key]; !ok {
						t.Errorf("Secret %s has no key %s", ref.Name, ref.Key)
					}
				}
			}
			tokenSet = true
			continue
		}
		isGrpcurl := strings.HasPrefix(line, "grpcurl ")
		isGenerate := strings.HasPrefix(line, "switchyard generate ")
		if !isGrpcurl && !isGenerate {
			continue
		}
		calls++
		words, err := shellWords(line)
		if err != nil {
			t.Errorf("notes: %v", err)
			continue
		}
		hasToken := strings.Contains(line, "$SWITCHYARD_API_TOKEN")
		switch {
		case auth && !hasToken:
			t.Errorf("notes: %q: the API requires the token (auth.enabled), the command would get Unauthenticated", line)
		case auth && !tokenSet:
			t.Errorf("notes: %q uses $SWITCHYARD_API_TOKEN before it is set", line)
		case !auth && (hasToken || strings.Contains(line, "authorization")):
			t.Errorf("notes: %q passes a token, but auth is off", line)
		}
		if isGrpcurl && auth && !slices.Contains(words, "authorization: Bearer $SWITCHYARD_API_TOKEN") {
			t.Errorf("notes: %q: want -H \"authorization: Bearer $SWITCHYARD_API_TOKEN\"", line)
		}
		if isGenerate {
			args := slices.Clone(words[1:])
			for i, a := range args {
				args[i] = strings.ReplaceAll(a, "$SWITCHYARD_API_TOKEN", "token")
			}
			if err := checkFlags(args); err != nil {
				t.Errorf("notes: %v", err)
			}
			if auth {
				if tok, _ := flagValue(words, "api-token"); tok != "$SWITCHYARD_API_TOKEN" && !slices.Contains(words, "--api-token") {
					t.Errorf("notes: %q: want --api-token \"$SWITCHYARD_API_TOKEN\"", line)
				}
			}
		}
	}
	if calls < 2 {
		t.Errorf("notes show %d API commands, want grpcurl and switchyard generate:\n%s", calls, notes)
	}
	if auth && !tokenSet {
		t.Errorf("notes: auth is on but nothing reads the token from its Secret:\n%s", notes)
	}
}
