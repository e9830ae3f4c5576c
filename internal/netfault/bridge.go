// Package netfault is a fault-injecting TCP bridge for tests (as etcd's
// integration bridge): clients connect to the bridge, which forwards to the real
// server until told to cut the link. Cutting closes every connection and refuses
// new ones, which is what a client sees of a crashed server or a partition,
// without stopping the server (an embedded etcd takes seconds to stop).
package netfault

import (
	"errors"
	"io"
	"net"
	"sync"
)

// Bridge forwards connections from its own loopback address to a target.
type Bridge struct {
	lis    net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// New starts a bridge to target on a free loopback port.
func New(target string) (*Bridge, error) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	b := &Bridge{lis: lis, target: target, conns: map[net.Conn]bool{}}
	b.wg.Add(1)
	go b.accept()
	return b, nil
}

// Addr is the address clients dial instead of the target's.
func (b *Bridge) Addr() string { return b.lis.Addr().String() }

// Cut closes every forwarded connection and refuses new ones until Restore.
func (b *Bridge) Cut() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.down = true
	for c := range b.conns {
		c.Close()
		delete(b.conns, c)
	}
}

// Restore accepts and forwards connections again.
func (b *Bridge) Restore() {
	b.mu.Lock()
	b.down = false
	b.mu.Unlock()
}

// Close stops the bridge and its connections.
func (b *Bridge) Close() {
	b.lis.Close()
	b.Cut()
	b.wg.Wait()
}

func (b *Bridge) track(c net.Conn) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.down {
		c.Close()
		return false
	}
	b.conns[c] = true
	return true
}

func (b *Bridge) accept() {
	defer b.wg.Done()
	for {
		in, err := b.lis.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !b.track(in) {
			continue
		}
		out, err := net.Dial("tcp", b.target)
		if err != nil || !b.track(out) {
			in.Close()
			if out != nil {
				out.Close()
			}
			continue
		}
		b.wg.Add(2)
		go b.pipe(out, in)
		go b.pipe(in, out)
	}
}

func (b *Bridge) pipe(dst, src net.Conn) {
	defer b.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	b.mu.Lock()
	delete(b.conns, dst)
	delete(b.conns, src)
	b.mu.Unlock()
}
