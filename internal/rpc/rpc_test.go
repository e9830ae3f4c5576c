package rpc

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// pki writes a CA and two leaf certificates (server for 127.0.0.1, client) as PEM.
func pki(t *testing.T) (dir string) {
	t.Helper()
	dir = t.TempDir()
	write := func(name string, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "switchyard-test-ca"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name}, NotBefore: time.Now().Add(-time.Hour),
			NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kb, _ := x509.MarshalECPrivateKey(k)
		write(name+".pem", "CERTIFICATE", der)
		write(name+"-key.pem", "EC PRIVATE KEY", kb)
	}
	leaf("server", 2, x509.ExtKeyUsageServerAuth)
	leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return dir
}

func serve(t *testing.T, c ServerConfig, register func(*grpc.Server)) string {
	t.Helper()
	s, err := NewServer(c)
	if err != nil {
		t.Fatal(err)
	}
	register(s)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

func check(ctx context.Context, dial func(context.Context, string) (*grpc.ClientConn, error), addr string) error {
	conn, err := dial(ctx, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

// Mutual TLS between nodes: a client with a certificate from the cluster CA gets
// through; one without a certificate, or trusting another CA, does not.
func TestMutualTLS(t *testing.T) {
	dir := pki(t)
	f := func(n string) string { return filepath.Join(dir, n) }
	addr := serve(t, ServerConfig{TLS: TLSFiles{Cert: f("server.pem"), Key: f("server-key.pem"), CA: f("ca.pem")}},
		func(s *grpc.Server) { healthpb.RegisterHealthServer(s, health.NewServer()) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	good, err := Dialer(TLSFiles{Cert: f("client.pem"), Key: f("client-key.pem"), CA: f("ca.pem")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := check(ctx, good, addr); err != nil {
		t.Fatalf("client with a cluster certificate: %v", err)
	}
	noCert, _ := Dialer(TLSFiles{CA: f("ca.pem")}, 0)
	if err := check(ctx, noCert, addr); status.Code(err) != codes.Unavailable {
		t.Fatalf("client without a certificate: %v", err)
	}
	plain, _ := Dialer(TLSFiles{}, 0)
	if err := check(ctx, plain, addr); err == nil {
		t.Fatal("plaintext client accepted by a TLS server")
	}
	if _, err := ServerCreds(TLSFiles{Cert: f("server.pem")}); err == nil {
		t.Fatal("certificate without a key accepted")
	}
	if _, err := ServerCreds(TLSFiles{Cert: f("server.pem"), Key: f("server-key.pem"), CA: f("nope.pem")}); err == nil {
		t.Fatal("missing CA file accepted")
	}
}

type panicky struct {
	healthpb.UnimplementedHealthServer
}

func (panicky) Check(context.Context, *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	panic("boom")
}

// The rate limit answers RESOURCE_EXHAUSTED past its burst, and a handler panic
// becomes INTERNAL without taking the server down.
func TestRateLimitAndRecovery(t *testing.T) {
	addr := serve(t, ServerConfig{RatePerSec: 0.001, RateBurst: 2}, func(s *grpc.Server) { healthpb.RegisterHealthServer(s, panicky{}) })
	dial, _ := Dialer(TLSFiles{}, 0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var codesSeen []codes.Code
	for range 3 {
		codesSeen = append(codesSeen, status.Code(check(ctx, dial, addr)))
	}
	want := []codes.Code{codes.Internal, codes.Internal, codes.ResourceExhausted}
	for i := range want {
		if codesSeen[i] != want[i] {
			t.Fatalf("codes %v, want %v", codesSeen, want)
		}
	}
}
