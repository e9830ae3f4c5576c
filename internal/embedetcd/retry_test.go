package embedetcd

import (
	"context"
	"net"
	"testing"
)

// TestStartPicksAgainWhenThePortIsTaken: a free port taken by someone else
// before etcd binds it (the race of picking a port, closing it, binding it)
// makes Start pick another, rather than fail.
func TestStartPicksAgainWhenThePortIsTaken(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	calls := 0
	pickAddr = func(addr string) (string, error) {
		calls++
		if calls == 1 {
			return taken.Addr().String(), nil // the client port, already in use
		}
		return freeAddr(addr)
	}
	defer func() { pickAddr = freeAddr }()
	s, err := Start(context.Background(), Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	defer s.Close()
	if calls < 3 {
		t.Fatalf("addresses picked %d times, want a second round", calls)
	}
	if s.Endpoints[0] == "http://"+taken.Addr().String() {
		t.Fatal("serving on the taken port")
	}
	// An address given explicitly is not replaced.
	if _, err := Start(context.Background(), Config{Dir: t.TempDir(), ClientAddr: taken.Addr().String(), PeerAddr: "127.0.0.1:1"}); err == nil {
		t.Fatal("Start on a taken explicit address succeeded")
	}
}
