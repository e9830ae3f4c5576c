package localcluster

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/cluster"
	"github.com/switchyard-serving/switchyard/internal/rpc"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// peerCerts writes a CA and one certificate it signs, for 127.0.0.1 and for
// server and client auth (what the Helm chart generates for the nodes), and
// returns the files as the nodes take them.
func peerCerts(t *testing.T) rpc.TLSFiles {
	t.Helper()
	dir := t.TempDir()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "peer-ca"}, IsCA: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTpl, caTpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "peer"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	f := rpc.TLSFiles{CA: filepath.Join(dir, "ca.crt"), Cert: filepath.Join(dir, "tls.crt"), Key: filepath.Join(dir, "tls.key")}
	for path, blk := range map[string]*pem.Block{f.CA: {Type: "CERTIFICATE", Bytes: caDER}, f.Cert: {Type: "CERTIFICATE", Bytes: der},
		f.Key: {Type: "EC PRIVATE KEY", Bytes: keyDER}} {
		if err := os.WriteFile(path, pem.EncodeToMemory(blk), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// With peer TLS (the chart's default) trunks and expert nodes share one
// certificate: generation through the cluster is exact, the expert nodes
// refuse callers without a certificate of the cluster's CA, and their
// plaintext health-only port (--health-listen, what Kubernetes probes) tells
// whether the experts are loaded.
func TestPeerMutualTLS(t *testing.T) {
	files := peerCerts(t)
	health := map[string]string{}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{ModelPath: filepath.Join(fixtureDir(t), "hf"), ExpertNodes: 2,
		Trunk: func(tc *trunknode.Config) { tc.PeerTLS = files },
		Expert: func(ec *expertnode.Config) {
			ec.PeerTLS = files
			ec.HealthListen = freeAddr(t)
			health[ec.NodeID] = ec.HealthListen
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)

	cli := clientFor(t, c.Endpoint)
	p := goldenGreedy(t)[0]
	got, err := gen(ctx, cli, p.IDs, len(p.Greedy))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, p.Greedy) {
		t.Fatalf("over mutual TLS: %v, want %v", got, p.Greedy)
	}

	tb, err := cluster.LoadTable(ctx, c.Client())
	if err != nil {
		t.Fatal(err)
	}
	addr, ok := tb.Addr("expert-0")
	if !ok {
		t.Fatal("expert-0 is not in the routing table")
	}
	pool := x509.NewCertPool()
	caPEM, _ := os.ReadFile(files.CA)
	pool.AppendCertsFromPEM(caPEM)
	stranger := peerCerts(t) // another cluster's CA
	strangerPair, err := tls.LoadX509KeyPair(stranger.Cert, stranger.Key)
	if err != nil {
		t.Fatal(err)
	}
	for name, creds := range map[string]credentials.TransportCredentials{
		"plaintext":                   insecure.NewCredentials(),
		"TLS without a certificate":   credentials.NewTLS(&tls.Config{RootCAs: pool}),
		"a certificate of another CA": credentials.NewTLS(&tls.Config{RootCAs: pool, Certificates: []tls.Certificate{strangerPair}}),
	} {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = pb.NewExpertServiceClient(conn).Stats(cctx, &pb.StatsRequest{})
		ccancel()
		conn.Close()
		if err == nil {
			t.Errorf("%s: the expert node answered Stats", name)
		}
	}

	for id, h := range health {
		conn, err := grpc.NewClient(h, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		res, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: "switchyard.v1.ExpertService"})
		ccancel()
		conn.Close()
		if err != nil || res.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: health on the plaintext port %s: %v %v, want SERVING", id, h, res, err)
		}
	}
}
