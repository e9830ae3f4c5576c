package helmtest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

const (
	release     = "sy"
	namespace   = "switchyard-test"
	kubeVersion = "1.34.0"
	// Chart fullname for release "sy" (the release name does not contain the chart name).
	fullname = release + "-switchyard"
)

var (
	helmBin       string
	switchyardBin string
	chartDir      string
	repoRoot      string
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	chartDir = filepath.Join(wd, "..", "switchyard")
	if d := os.Getenv("SWITCHYARD_CHART"); d != "" {
		chartDir = d // e.g. a modified copy, to see that the checks catch a change
	}
	repoRoot = filepath.Join(wd, "..", "..", "..")

	helmBin = os.Getenv("HELM")
	if helmBin == "" {
		if p, err := exec.LookPath("helm"); err == nil {
			helmBin = p
		} else {
			fmt.Println("helmtest: SKIP: no helm binary (set HELM, or run scripts/helm-test.sh, which installs a pinned one)")
			return 0
		}
	}
	if _, err := os.Stat(helmBin); err != nil {
		fmt.Fprintf(os.Stderr, "helmtest: HELM=%s: %v\n", helmBin, err)
		return 1
	}

	switchyardBin = os.Getenv("SWITCHYARD_BIN")
	if switchyardBin == "" {
		dir, err := os.MkdirTemp("", "helmtest-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		switchyardBin = filepath.Join(dir, "switchyard")
		cmd := exec.Command("go", "build", "-o", switchyardBin, "./cmd/switchyard")
		cmd.Dir = repoRoot
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			fmt.Fprintf(os.Stderr, "helmtest: building switchyard: %v\n", err)
			return 1
		}
	}
	return m.Run()
}

// helm runs the helm binary and returns its combined output.
func helm(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, helmBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// helmArgs are the flags shared by lint and template: value files under
// values/ and --set pairs.
func helmArgs(files, sets []string) []string {
	var args []string
	for _, f := range files {
		if !filepath.IsAbs(f) {
			f = filepath.Join("values", f)
		}
		args = append(args, "-f", f)
	}
	for _, s := range sets {
		args = append(args, "--set", s)
	}
	return args
}

// manifests is one rendering of the chart, decoded.
type manifests struct {
	deployments     []*appsv1.Deployment
	statefulSets    []*appsv1.StatefulSet
	services        []*corev1.Service
	pdbs            []*policyv1.PodDisruptionBudget
	configMaps      []*corev1.ConfigMap
	secrets         []*corev1.Secret
	serviceAccounts []*corev1.ServiceAccount
	serviceMonitors []*serviceMonitor
	jobs            []*batchv1.Job
	pvcs            []*corev1.PersistentVolumeClaim
	netPols         []*networkingv1.NetworkPolicy
	scaledObjects   []*scaledObject
	prometheusRules []*prometheusRule
	certificates    []*certificate
	issuers         []*issuer
	objects         []metaObject // every object, for label checks
	raw             string       // the rendered stream, as helm printed it
}

type metaObject struct {
	kind string
	meta *metav1.ObjectMeta
}

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor the
// chart renders; decoded strictly, so a field outside it is an error too.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path"`
			Interval      string `json:"interval"`
			ScrapeTimeout string `json:"scrapeTimeout"`
			Relabelings   []struct {
				SourceLabels []string `json:"sourceLabels"`
				TargetLabel  string   `json:"targetLabel"`
			} `json:"relabelings"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// scaledObject is the part of KEDA's keda.sh/v1alpha1 ScaledObject the chart
// renders (decoded strictly).
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		ScaleTargetRef struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Name       string `json:"name"`
		} `json:"scaleTargetRef"`
		MinReplicaCount *int32 `json:"minReplicaCount"`
		MaxReplicaCount *int32 `json:"maxReplicaCount"`
		PollingInterval *int32 `json:"pollingInterval"`
		CooldownPeriod  *int32 `json:"cooldownPeriod"`
		Advanced        *struct {
			HorizontalPodAutoscalerConfig struct {
				Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior"`
			} `json:"horizontalPodAutoscalerConfig"`
		} `json:"advanced"`
		Triggers []struct {
			Type              string            `json:"type"`
			Name              string            `json:"name"`
			MetricType        string            `json:"metricType"`
			Metadata          map[string]string `json:"metadata"`
			AuthenticationRef *struct {
				Name string `json:"name"`
			} `json:"authenticationRef"`
		} `json:"triggers"`
	} `json:"spec"`
}

// certificate is the part of cert-manager's cert-manager.io/v1 Certificate the
// chart renders (decoded strictly).
type certificate struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SecretName  string   `json:"secretName"`
		CommonName  string   `json:"commonName"`
		DNSNames    []string `json:"dnsNames"`
		IsCA        bool     `json:"isCA"`
		Usages      []string `json:"usages"`
		Duration    string   `json:"duration"`
		RenewBefore string   `json:"renewBefore"`
		PrivateKey  *struct {
			Algorithm      string `json:"algorithm"`
			Size           int    `json:"size"`
			RotationPolicy string `json:"rotationPolicy"`
		} `json:"privateKey"`
		IssuerRef struct {
			Name  string `json:"name"`
			Kind  string `json:"kind"`
			Group string `json:"group"`
		} `json:"issuerRef"`
	} `json:"spec"`
}

// issuer is cert-manager's cert-manager.io/v1 Issuer as the chart renders it:
// self-signed, or a CA kept in a Secret (decoded strictly).
type issuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		SelfSigned *struct{} `json:"selfSigned"`
		CA         *struct {
			SecretName string `json:"secretName"`
		} `json:"ca"`
	} `json:"spec"`
}

// prometheusRule is monitoring.coreos.com/v1 PrometheusRule (decoded strictly).
type prometheusRule struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Groups []ruleGroup `json:"groups"`
	} `json:"spec"`
}

type ruleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []rule `json:"rules"`
}

type rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

var strictDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme,
		batchv1.AddToScheme, networkingv1.AddToScheme, rbacv1.AddToScheme} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return json.NewSerializerWithOptions(json.DefaultMetaFactory, scheme, scheme,
		json.SerializerOptions{Yaml: true, Strict: true})
}()

var sourceRE = regexp.MustCompile(`(?m)^# Source: (\S+)`)

// render runs `helm template` and decodes the output strictly.
func render(t *testing.T, files, sets []string) *manifests {
	t.Helper()
	args := append([]string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}, helmArgs(files, sets)...)
	out, err := helm(args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m, err := decode([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	m.raw = out
	return m
}

// decode splits a multi-document YAML stream and decodes each document
// strictly into its Kubernetes type.
func decode(stream []byte) (*manifests, error) {
	m := &manifests{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(stream)))
	var errs []error
	for {
		doc, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if isEmptyDoc(doc) {
			continue
		}
		src := "?"
		if s := sourceRE.FindSubmatch(doc); s != nil {
			src = string(s[1])
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", src, err))
			continue
		}
		if tm.Kind == "ServiceMonitor" && tm.APIVersion == "monitoring.coreos.com/v1" {
			sm := &serviceMonitor{}
			if err := yaml.UnmarshalStrict(doc, sm); err != nil {
				errs = append(errs, fmt.Errorf("%s: ServiceMonitor: %w", src, err))
				continue
			}
			m.serviceMonitors = append(m.serviceMonitors, sm)
			m.objects = append(m.objects, metaObject{"ServiceMonitor", &sm.ObjectMeta})
			continue
		}
		if tm.Kind == "ScaledObject" && tm.APIVersion == "keda.sh/v1alpha1" {
			so := &scaledObject{}
			if err := yaml.UnmarshalStrict(doc, so); err != nil {
				errs = append(errs, fmt.Errorf("%s: ScaledObject: %w", src, err))
				continue
			}
			m.scaledObjects = append(m.scaledObjects, so)
			m.objects = append(m.objects, metaObject{"ScaledObject", &so.ObjectMeta})
			continue
		}
		if tm.Kind == "PrometheusRule" && tm.APIVersion == "monitoring.coreos.com/v1" {
			pr := &prometheusRule{}
			if err := yaml.UnmarshalStrict(doc, pr); err != nil {
				errs = append(errs, fmt.Errorf("%s: PrometheusRule: %w", src, err))
				continue
			}
			m.prometheusRules = append(m.prometheusRules, pr)
			m.objects = append(m.objects, metaObject{"PrometheusRule", &pr.ObjectMeta})
			continue
		}
		if tm.Kind == "Certificate" && tm.APIVersion == "cert-manager.io/v1" {
			c := &certificate{}
			if err := yaml.UnmarshalStrict(doc, c); err != nil {
				errs = append(errs, fmt.Errorf("%s: Certificate: %w", src, err))
				continue
			}
			m.certificates = append(m.certificates, c)
			m.objects = append(m.objects, metaObject{"Certificate", &c.ObjectMeta})
			continue
		}
		if tm.Kind == "Issuer" && tm.APIVersion == "cert-manager.io/v1" {
			is := &issuer{}
			if err := yaml.UnmarshalStrict(doc, is); err != nil {
				errs = append(errs, fmt.Errorf("%s: Issuer: %w", src, err))
				continue
			}
			m.issuers = append(m.issuers, is)
			m.objects = append(m.objects, metaObject{"Issuer", &is.ObjectMeta})
			continue
		}
		obj, gvk, err := strictDecoder.Decode(doc, nil, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s %s: %w", src, tm.APIVersion, tm.Kind, err))
			continue
		}
		switch o := obj.(type) {
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *appsv1.StatefulSet:
			m.statefulSets = append(m.statefulSets, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *corev1.Service:
			m.services = append(m.services, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *corev1.ConfigMap:
			m.configMaps = append(m.configMaps, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *corev1.Secret:
			m.secrets = append(m.secrets, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *corev1.ServiceAccount:
			m.serviceAccounts = append(m.serviceAccounts, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *batchv1.Job:
			m.jobs = append(m.jobs, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *corev1.PersistentVolumeClaim:
			m.pvcs = append(m.pvcs, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		case *networkingv1.NetworkPolicy:
			m.netPols = append(m.netPols, o)
			m.objects = append(m.objects, metaObject{gvk.Kind, &o.ObjectMeta})
		default:
			errs = append(errs, fmt.Errorf("%s: %s: a kind the chart is not expected to render (add it to the checks)", src, gvk))
		}
	}
	return m, errors.Join(errs...)
}

func isEmptyDoc(doc []byte) bool {
	for _, line := range strings.Split(string(doc), "\n") {
		l := strings.TrimSpace(line)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return false
		}
	}
	return true
}

// podTemplate is the pod template of a Deployment or StatefulSet.
type podTemplate struct {
	kind, name string
	selector   *metav1.LabelSelector
	tpl        *corev1.PodTemplateSpec
	replicas   int32
	sts        *appsv1.StatefulSet // nil for a Deployment
}

func (m *manifests) workloads() []podTemplate {
	var out []podTemplate
	for _, d := range m.deployments {
		out = append(out, podTemplate{"Deployment", d.Name, d.Spec.Selector, &d.Spec.Template, ptrVal(d.Spec.Replicas, 1), nil})
	}
	for _, s := range m.statefulSets {
		out = append(out, podTemplate{"StatefulSet", s.Name, s.Spec.Selector, &s.Spec.Template, ptrVal(s.Spec.Replicas, 1), s})
	}
	return out
}

func (m *manifests) statefulSet(name string) *appsv1.StatefulSet {
	for _, s := range m.statefulSets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) deployment(name string) *appsv1.Deployment {
	for _, d := range m.deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) configMap(name string) *corev1.ConfigMap {
	for _, c := range m.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (m *manifests) pvc(name string) *corev1.PersistentVolumeClaim {
	for _, p := range m.pvcs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

func (m *manifests) secret(name string) *corev1.Secret {
	for _, s := range m.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// certificateFor returns the cert-manager Certificate that writes Secret name.
func (m *manifests) certificateFor(secret string) *certificate {
	for _, c := range m.certificates {
		if c.Spec.SecretName == secret {
			return c
		}
	}
	return nil
}

func (m *manifests) issuer(name string) *issuer {
	for _, is := range m.issuers {
		if is.Name == name {
			return is
		}
	}
	return nil
}

func ptrVal[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func container(spec *corev1.PodSpec, name string) *corev1.Container {
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return &spec.Containers[i]
		}
	}
	return nil
}

func initContainer(spec *corev1.PodSpec, name string) *corev1.Container {
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			return &spec.InitContainers[i]
		}
	}
	return nil
}

func envVar(c *corev1.Container, name string) *corev1.EnvVar {
	for i := range c.Env {
		if c.Env[i].Name == name {
			return &c.Env[i]
		}
	}
	return nil
}

// flagValue returns the value of --name=value in args (the chart always uses
// the = form) and whether it is there.
func flagValue(args []string, name string) (string, bool) {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v, true
		}
		if a == "--"+name {
			return "", true
		}
	}
	return "", false
}

// renderNotes renders templates/NOTES.txt, which `helm template` leaves out
// (and `helm install --dry-run` needs a cluster for): it copies the chart into
// a temporary folder with the notes as a plain file and one extra template that
// renders it with tpl into a ConfigMap, and returns that text. The notes see
// the same values, release and (empty) lookups as the manifests.
func renderNotes(t *testing.T, ns string, files, sets []string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "switchyard")
	if err := os.CopyFS(dir, os.DirFS(chartDir)); err != nil {
		t.Fatal(err)
	}
	notes, err := os.ReadFile(filepath.Join(chartDir, "templates", "NOTES.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notes-under-test.txt"), notes, 0o644); err != nil {
		t.Fatal(err)
	}
	const tpl = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes-under-test\ndata:\n  notes: {{ tpl (.Files.Get \"notes-under-test.txt\") . | toJson }}\n"
	if err := os.WriteFile(filepath.Join(dir, "templates", "zz-notes-under-test.yaml"), []byte(tpl), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"template", release, dir, "--namespace", ns, "--kube-version", kubeVersion,
		"--show-only", "templates/zz-notes-under-test.yaml"}, helmArgs(files, sets)...)
	out, err := helm(args...)
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var cm corev1.ConfigMap
	if err := yaml.Unmarshal([]byte(out), &cm); err != nil {
		t.Fatalf("rendered notes: %v\n%s", err, out)
	}
	if cm.Data["notes"] == "" {
		t.Fatalf("rendered notes are empty:\n%s", out)
	}
	return cm.Data["notes"]
}
