package helmtest

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// peerDNSNames are the names the peer certificate must hold: the per-pod
// names of the expert and trunk headless Services, with and without the
// cluster domain.
func peerDNSNames() []string {
	var out []string
	for _, svc := range []string{fullname + "-expert-headless", fullname + "-trunk-headless"} {
		out = append(out, fmt.Sprintf("*.%s.%s.svc.cluster.local", svc, namespace), fmt.Sprintf("*.%s.%s.svc", svc, namespace))
	}
	return out
}

// peerHosts are names a trunk dials or is identified by (what the nodes
// advertise in etcd).
func peerHosts() []string {
	return []string{
		fmt.Sprintf("%s-expert-0.%s-expert-headless.%s.svc.cluster.local", fullname, fullname, namespace),
		fmt.Sprintf("%s-expert-7.%s-expert-headless.%s.svc", fullname, fullname, namespace),
		fmt.Sprintf("%s-trunk-1.%s-trunk-headless.%s.svc.cluster.local", fullname, fullname, namespace),
	}
}

// checkPeerMounts: trunk and expert containers pass the peer TLS flags, whose
// files come from the volume of Secret secret mounted at their folder.
func checkPeerMounts(t *testing.T, m *manifests, secret string) {
	t.Helper()
	for _, role := range []string{"trunk", "expert"} {
		sts := m.statefulSet(fullname + "-" + role)
		c := container(&sts.Spec.Template.Spec, role)
		for _, f := range []string{"peer-tls-cert", "peer-tls-key", "peer-tls-ca"} {
			file, ok := flagValue(c.Args, f)
			if !ok {
				t.Errorf("%s: --%s missing: every node must authenticate its peers", role, f)
				continue
			}
			vol := volumeAt(&sts.Spec.Template.Spec, c, path.Dir(file))
			if vol == nil || vol.Secret == nil || vol.Secret.SecretName != secret {
				t.Errorf("%s: --%s=%s is not in a volume of Secret %s: %+v", role, f, file, secret, vol)
			}
		}
	}
}

// volumeAt returns the volume mounted at dir in c.
func volumeAt(spec *corev1.PodSpec, c *corev1.Container, dir string) *corev1.Volume {
	for _, vm := range c.VolumeMounts {
		if vm.MountPath != dir {
			continue
		}
		for i := range spec.Volumes {
			if spec.Volumes[i].Name == vm.Name {
				return &spec.Volumes[i]
			}
		}
	}
	return nil
}

// mountedFile writes, for the file at p in container c, what the pod would
// see there: the rendered Secret's key (items applied), or a stand-in tokens
// file when the Secret is not the chart's. It returns the local path.
func mountedFile(t *testing.T, m *manifests, w podTemplate, c *corev1.Container, p string) string {
	t.Helper()
	vol := volumeAt(&w.tpl.Spec, c, path.Dir(p))
	if vol == nil || vol.Secret == nil {
		t.Errorf("%s: %s is not in a Secret volume", c.Name, p)
		return p
	}
	key := path.Base(p)
	for _, it := range vol.Secret.Items {
		if it.Path == key {
			key = it.Key
		}
	}
	data := []byte("stand-in 0123456789abcdefghij\n")
	if s := m.secret(vol.Secret.SecretName); s != nil {
		var ok bool
		if data, ok = s.Data[key]; !ok {
			t.Errorf("%s: Secret %s has no key %s for %s", c.Name, s.Name, key, p)
		}
	}
	f := filepath.Join(t.TempDir(), path.Base(p))
	if err := os.WriteFile(f, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func parseCert(t *testing.T, what string, b []byte) *x509.Certificate {
	t.Helper()
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("%s: no PEM certificate", what)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return c
}

// handshake runs a TLS handshake between a server and a client over loopback
// TCP, then one byte each way, and returns the server's and the client's
// errors (with TLS 1.3 a client finishes its handshake before the server has
// checked the client's certificate: a refusal shows on the exchange).
func handshake(server, client *tls.Config) (error, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err, err
	}
	defer lis.Close()
	done := make(chan error, 1)
	go func() {
		conn, err := lis.Accept()
		if err != nil {
			done <- err
			return
		}
		defer conn.Close()
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		srv := tls.Server(conn, server)
		if err := srv.Handshake(); err != nil {
			done <- err
			return
		}
		b := make([]byte, 1)
		if _, err := srv.Read(b); err != nil {
			done <- err
			return
		}
		_, err = srv.Write(b)
		done <- err
	}()
	conn, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		return err, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	cli := tls.Client(conn, client)
	cerr := cli.Handshake()
	if cerr == nil {
		if _, cerr = cli.Write([]byte{1}); cerr == nil {
			_, cerr = cli.Read(make([]byte, 1))
		}
	}
	return <-done, cerr
}

// By default every node authenticates its peers with a certificate the chart
// generates: the Secret holds a CA and a certificate signed by it for the
// headless Services' names, usable as server and as client certificate; an
// expert node (server, client certificates required) accepts a trunk holding
// it and refuses a client without one or with another CA's.
func TestPeerTLSGenerated(t *testing.T) {
	m := render(t, nil, nil)
	name := fullname + "-peer-tls"
	s := m.secret(name)
	if s == nil {
		t.Fatalf("no Secret %s: the default render must generate the peer certificate", name)
	}
	if s.Type != corev1.SecretTypeTLS {
		t.Errorf("Secret %s type %s, want %s", name, s.Type, corev1.SecretTypeTLS)
	}
	checkPeerMounts(t, m, name)
	ca := parseCert(t, "ca.crt", s.Data["ca.crt"])
	leaf := parseCert(t, "tls.crt", s.Data["tls.crt"])
	if !ca.IsCA {
		t.Errorf("ca.crt is not a CA certificate")
	}
	if !slices.Equal(slices.Sorted(slices.Values(leaf.DNSNames)), slices.Sorted(slices.Values(peerDNSNames()))) {
		t.Errorf("certificate names %v, want %v", leaf.DNSNames, peerDNSNames())
	}
	if days := time.Until(leaf.NotAfter).Hours() / 24; days < 3000 {
		t.Errorf("certificate valid for %.0f more days, want about 3650 (tls.peer.generated.validityDays)", days)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, host := range peerHosts() {
		for _, use := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
			if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: roots, KeyUsages: []x509.ExtKeyUsage{use}}); err != nil {
				t.Errorf("certificate does not verify against the CA for %s (usage %v): %v", host, use, err)
			}
		}
	}
	pair, err := tls.X509KeyPair(s.Data["tls.crt"], s.Data["tls.key"])
	if err != nil {
		t.Fatalf("tls.crt and tls.key: %v", err)
	}

	// The expert node's server and the trunk's client, as internal/rpc
	// configures them from the three files.
	expertHost := peerHosts()[0]
	server := &tls.Config{Certificates: []tls.Certificate{pair}, ClientCAs: roots, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
	trunk := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: expertHost, MinVersion: tls.VersionTLS12}
	if serr, cerr := handshake(server, trunk); serr != nil || cerr != nil {
		t.Fatalf("trunk -> expert mutual TLS: server %v, client %v", serr, cerr)
	}
	anon := &tls.Config{RootCAs: roots, ServerName: expertHost, MinVersion: tls.VersionTLS12}
	if serr, _ := handshake(server, anon); serr == nil {
		t.Errorf("an expert node accepted a client without a certificate")
	}
	// Another release's certificates (another render: another CA).
	other := render(t, nil, nil).secret(name)
	stranger, err := tls.X509KeyPair(other.Data["tls.crt"], other.Data["tls.key"])
	if err != nil {
		t.Fatal(err)
	}
	foreign := &tls.Config{Certificates: []tls.Certificate{stranger}, RootCAs: roots, ServerName: expertHost, MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true} // the stranger does not check the server; the server must check it
	if serr, _ := handshake(server, foreign); serr == nil {
		t.Errorf("an expert node accepted a client certificate from another CA")
	}
	wrongName := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: roots, ServerName: "evil.example.com", MinVersion: tls.VersionTLS12}
	if _, cerr := handshake(server, wrongName); cerr == nil {
		t.Errorf("the certificate verified for a name outside the release")
	}

	// Off: no flags, no Secret, no mounts.
	off := render(t, nil, []string{"tls.peer.enabled=false"})
	if off.secret(name) != nil {
		t.Errorf("tls.peer.enabled=false still renders Secret %s", name)
	}
	for _, role := range []string{"trunk", "expert"} {
		c := container(&off.statefulSet(fullname+"-"+role).Spec.Template.Spec, role)
		if _, ok := flagValue(c.Args, "peer-tls-ca"); ok {
			t.Errorf("%s: --peer-tls-ca with tls.peer.enabled=false", role)
		}
	}
	// Bring your own: the Secret is referenced, not rendered.
	own := render(t, nil, []string{"tls.peer.existingSecret=corp-peer-tls"})
	if own.secret(name) != nil || len(own.certificates) > 0 {
		t.Errorf("tls.peer.existingSecret set: the chart must not make a certificate")
	}
	checkPeerMounts(t, own, "corp-peer-tls")
}

// With tls.peer.certManager.enabled the chart asks cert-manager for the
// certificate instead: its own CA chain (a self-signed Issuer, a CA
// Certificate, a CA Issuer) or a given issuer, and a Certificate for the
// nodes' names and both usages written to the Secret the nodes mount.
func TestPeerTLSCertManager(t *testing.T) {
	name := fullname + "-peer-tls"
	m := render(t, nil, []string{"tls.peer.certManager.enabled=true"})
	if m.secret(name) != nil {
		t.Errorf("cert-manager mode renders Secret %s itself; cert-manager must write it", name)
	}
	checkPeerMounts(t, m, name)
	c := m.certificateFor(name)
	if c == nil {
		t.Fatalf("no Certificate writes Secret %s (have %d Certificates)", name, len(m.certificates))
	}
	checkPeerCertificate(t, c)
	is := m.issuer(c.Spec.IssuerRef.Name)
	if c.Spec.IssuerRef.Kind != "Issuer" || is == nil || is.Spec.CA == nil {
		t.Fatalf("the peer Certificate's issuer %+v: want the release's CA Issuer", c.Spec.IssuerRef)
	}
	ca := m.certificateFor(is.Spec.CA.SecretName)
	if ca == nil || !ca.Spec.IsCA {
		t.Fatalf("the CA Issuer's Secret %s is not written by a CA Certificate", is.Spec.CA.SecretName)
	}
	root := m.issuer(ca.Spec.IssuerRef.Name)
	if root == nil || root.Spec.SelfSigned == nil {
		t.Errorf("the CA Certificate's issuer %+v: want the release's self-signed Issuer", ca.Spec.IssuerRef)
	}
	if len(m.certificates) != 2 || len(m.issuers) != 2 {
		t.Errorf("%d Certificates and %d Issuers, want 2 and 2", len(m.certificates), len(m.issuers))
	}

	// A given issuer: one Certificate signed by it, no CA chain of ours.
	m = render(t, nil, []string{"tls.peer.certManager.enabled=true", "tls.peer.certManager.issuerRef.name=corp-ca", "tls.peer.certManager.issuerRef.kind=ClusterIssuer"})
	c = m.certificateFor(name)
	if c == nil || len(m.certificates) != 1 || len(m.issuers) != 0 {
		t.Fatalf("with issuerRef: %d Certificates, %d Issuers; want only the peer Certificate", len(m.certificates), len(m.issuers))
	}
	if r := c.Spec.IssuerRef; r.Name != "corp-ca" || r.Kind != "ClusterIssuer" || r.Group != "cert-manager.io" {
		t.Errorf("issuerRef %+v, want corp-ca ClusterIssuer", r)
	}
	checkPeerCertificate(t, c)
}

func checkPeerCertificate(t *testing.T, c *certificate) {
	t.Helper()
	if !slices.Equal(slices.Sorted(slices.Values(c.Spec.DNSNames)), slices.Sorted(slices.Values(peerDNSNames()))) {
		t.Errorf("Certificate dnsNames %v, want %v", c.Spec.DNSNames, peerDNSNames())
	}
	for _, u := range []string{"server auth", "client auth"} {
		if !slices.Contains(c.Spec.Usages, u) {
			t.Errorf("Certificate usages %v lack %q: nodes use it as server and as client", c.Spec.Usages, u)
		}
	}
	if _, err := time.ParseDuration(c.Spec.Duration); err != nil {
		t.Errorf("Certificate duration %q: %v", c.Spec.Duration, err)
	}
}

// readTokens parses a tokens file as the trunk does: identity -> token.
func readTokens(t *testing.T, b []byte) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if len(f) != 2 {
			t.Fatalf("tokens file line %q: want \"<identity> <token>\"", line)
		}
		out[f[0]] = f[1]
	}
	return out
}

// Per-client tokens: the chart writes a tokens file for auth.tokens.clients
// (generating the empty tokens) or mounts an existing Secret's, and the
// trunks get --api-tokens-file; the real binary parses the rendered file (the
// variants' flag check); with sharedToken false the shared token is gone.
func TestAPITokens(t *testing.T) {
	const given = "s3arch-t0ken-0123456789"
	m := render(t, nil, []string{"auth.tokens.clients.billing=", "auth.tokens.clients.search=" + given, "auth.sharedToken=false"})
	s := m.secret(fullname + "-api-tokens")
	if s == nil {
		t.Fatalf("no Secret %s-api-tokens", fullname)
	}
	toks := readTokens(t, s.Data["tokens"])
	if len(toks) != 2 || toks["search"] != given || len(toks["billing"]) < 16 || toks["billing"] == given {
		t.Errorf("tokens file %v: want billing (generated, >= 16 characters) and search (%s)", toks, given)
	}
	trunk := m.statefulSet(fullname + "-trunk")
	c := container(&trunk.Spec.Template.Spec, "trunk")
	f, ok := flagValue(c.Args, "api-tokens-file")
	if !ok {
		t.Fatalf("trunk: no --api-tokens-file")
	}
	vol := volumeAt(&trunk.Spec.Template.Spec, c, path.Dir(f))
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != s.Name {
		t.Fatalf("--api-tokens-file=%s is not in a volume of Secret %s: %+v", f, s.Name, vol)
	}
	if envVar(c, "SWITCHYARD_API_TOKEN") != nil {
		t.Errorf("auth.sharedToken=false: the trunk still accepts the shared token")
	}
	if err := checkFlags([]string{"trunk", "--api-tokens-file=" + mountedFile(t, m, podTemplate{tpl: &trunk.Spec.Template}, c, f)}); err != nil {
		t.Errorf("the binary refuses the rendered tokens file: %v", err)
	}
	annot := trunk.Spec.Template.Annotations["switchyard.io/api-clients"]
	m2 := render(t, nil, []string{"auth.tokens.clients.billing=", "auth.tokens.clients.search=" + given, "auth.tokens.clients.ads=", "auth.sharedToken=false"})
	if a2 := m2.statefulSet(fullname + "-trunk").Spec.Template.Annotations["switchyard.io/api-clients"]; annot == "" || a2 == annot {
		t.Errorf("adding a client must change the trunk pod template (annotation %q -> %q) so trunks reread the file", annot, a2)
	}
	notes := renderNotes(t, namespace, nil, []string{"auth.tokens.clients.billing=", "auth.tokens.clients.search=" + given, "auth.sharedToken=false"})
	checkNotes(t, notes, m, release, namespace)
	if !strings.Contains(notes, fmt.Sprintf("get secret %s -o jsonpath='{.data.tokens}' | base64 -d", s.Name)) {
		t.Errorf("notes do not show how to read the tokens:\n%s", notes)
	}

	// An existing Secret: mounted with its key, nothing rendered; the shared
	// token stays by default.
	m = render(t, nil, []string{"auth.tokens.existingSecret=client-tokens", "auth.tokens.key=file"})
	if m.secret(fullname+"-api-tokens") != nil {
		t.Errorf("auth.tokens.existingSecret set, but the chart renders its own tokens Secret")
	}
	trunk = m.statefulSet(fullname + "-trunk")
	c = container(&trunk.Spec.Template.Spec, "trunk")
	f, _ = flagValue(c.Args, "api-tokens-file")
	vol = volumeAt(&trunk.Spec.Template.Spec, c, path.Dir(f))
	if vol == nil || vol.Secret == nil || vol.Secret.SecretName != "client-tokens" || len(vol.Secret.Items) != 1 ||
		vol.Secret.Items[0].Key != "file" || vol.Secret.Items[0].Path != path.Base(f) {
		t.Errorf("--api-tokens-file=%s: want key file of Secret client-tokens mounted there: %+v", f, vol)
	}
	if envVar(c, "SWITCHYARD_API_TOKEN") == nil {
		t.Errorf("sharedToken defaults to true: the shared token must stay")
	}
	checkNotes(t, renderNotes(t, namespace, nil, []string{"auth.tokens.existingSecret=client-tokens", "auth.sharedToken=false"}),
		render(t, nil, []string{"auth.tokens.existingSecret=client-tokens", "auth.sharedToken=false"}), release, namespace)

	// No per-client tokens by default; none with auth off.
	for _, sets := range [][]string{nil, {"auth.enabled=false", "auth.tokens.clients.billing="}} {
		m := render(t, nil, sets)
		c := container(&m.statefulSet(fullname+"-trunk").Spec.Template.Spec, "trunk")
		if _, ok := flagValue(c.Args, "api-tokens-file"); ok || m.secret(fullname+"-api-tokens") != nil {
			t.Errorf("%v: per-client tokens wired", sets)
		}
	}

	// Two clients with one token: refused at render time (the trunk would
	// refuse the file at start).
	args := append([]string{"template", release, chartDir, "--kube-version", kubeVersion},
		helmArgs(nil, []string{"auth.tokens.clients.a=" + given, "auth.tokens.clients.b=" + given})...)
	if out, err := helm(args...); err == nil || !strings.Contains(out, "same token") {
		t.Errorf("two clients sharing a token rendered: %v\n%s", err, out)
	}
}
