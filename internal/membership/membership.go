// Package membership is Switchyard's gossip layer (hashicorp/memberlist): every
// node joins one cluster with typed metadata (id, role, gRPC address), and the
// nodes learn within about a second when one fails — faster than an etcd lease
// expires. Trunk nodes stop sending to a failed expert node at once; the
// coordinator re-places its experts without waiting for the lease.
//
// Delegates never block: events are copied into a buffered channel and the dead
// set is kept under a mutex. Gossip is encrypted (AES-GCM) when a key is set.
package membership

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
)

// Meta is the metadata every node gossips (kept under memberlist's 512-byte limit).
type Meta struct {
	ID   string `json:"id"`
	Role string `json:"role"`
	Addr string `json:"addr"` // gRPC address
}

// EventKind says what happened to a member.
type EventKind int

// Event kinds.
const (
	Join EventKind = iota
	Leave
	Update
)

// Event is a membership change.
type Event struct {
	Kind EventKind
	Node Meta
}

// Config configures a member.
type Config struct {
	Meta
	BindAddr string // default 127.0.0.1
	BindPort int    // 0: a free port
	// AdvertiseAddr/Port are announced to peers (default: the bound address).
	AdvertiseAddr string
	AdvertisePort int
	// SecretKey (16, 24 or 32 bytes) encrypts all gossip; empty: plaintext.
	SecretKey []byte
	// LAN selects memberlist's LAN timers (production); otherwise the fast local
	// timers used on loopback and in tests.
	LAN bool
}

// Membership is a running member.
type Membership struct {
	ml     *memberlist.Memberlist
	events chan Event

	mu   sync.Mutex
	dead map[string]Meta // members that failed or left, by id, until they rejoin
	// alive is the live members (gossip name -> address and metadata), copied
	// in memberlist's event callbacks, which run under its node lock: reading
	// memberlist's own *Node values afterwards races with its updates.
	alive map[string]member
}

type member struct {
	addr string
	meta Meta
}

type delegate struct{ meta []byte }

func (d *delegate) NodeMeta(limit int) []byte                  { return d.meta }
func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

type events struct{ m *Membership }

func (e events) push(kind EventKind, n *memberlist.Node) {
	var meta Meta
	ok := json.Unmarshal(n.Meta, &meta) == nil && meta.ID != ""
	addr := net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	e.m.mu.Lock()
	switch kind {
	case Join, Update:
		e.m.alive[n.Name] = member{addr: addr, meta: meta}
	case Leave:
		delete(e.m.alive, n.Name)
	}
	if ok {
		switch kind {
		case Join, Update:
			delete(e.m.dead, meta.ID)
		case Leave:
			e.m.dead[meta.ID] = meta
		}
	}
	e.m.mu.Unlock()
	if !ok {
		return
	}
	select {
	case e.m.events <- Event{Kind: kind, Node: meta}:
	default: // never block gossip; Dead() and Members() stay accurate
	}
}

func (e events) NotifyJoin(n *memberlist.Node)   { e.push(Join, n) }
func (e events) NotifyLeave(n *memberlist.Node)  { e.push(Leave, n) }
func (e events) NotifyUpdate(n *memberlist.Node) { e.push(Update, n) }

// Start creates the member (not yet joined to anyone).
func Start(c Config) (*Membership, error) {
	if c.ID == "" || c.Role == "" {
		return nil, errors.New("membership: node id and role are required")
	}
	meta, err := json.Marshal(c.Meta)
	if err != nil || len(meta) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("membership: metadata of %d bytes exceeds %d", len(meta), memberlist.MetaMaxSize)
	}
	mc := memberlist.DefaultLocalConfig()
	if c.LAN {
		mc = memberlist.DefaultLANConfig()
	} else {
		mc.ProbeInterval = 200 * time.Millisecond
		mc.ProbeTimeout = 100 * time.Millisecond
		mc.SuspicionMult = 2
		mc.GossipInterval = 50 * time.Millisecond
	}
	// A restarted node keeps its id but may get a new address.
	mc.DeadNodeReclaimTime = 2 * mc.ProbeInterval
	mc.Name = c.Role + "/" + c.ID
	mc.BindAddr = c.BindAddr
	if mc.BindAddr == "" {
		mc.BindAddr = "127.0.0.1"
	}
	mc.BindPort = c.BindPort
	mc.AdvertisePort = c.AdvertisePort
	if c.AdvertiseAddr != "" {
		mc.AdvertiseAddr = c.AdvertiseAddr
	}
	mc.SecretKey = c.SecretKey
	mc.Logger = log.New(io.Discard, "", 0)
	m := &Membership{events: make(chan Event, 256), dead: map[string]Meta{}, alive: map[string]member{}}
	mc.Delegate = &delegate{meta: meta}
	mc.Events = events{m}
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}
	m.ml = ml
	return m, nil
}

// Addr is the gossip address peers join.
func (m *Membership) Addr() string {
	n := m.ml.LocalNode()
	return net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
}

// Join contacts the seeds and returns how many were reached.
func (m *Membership) Join(seeds []string) (int, error) {
	if len(seeds) == 0 {
		return 0, nil
	}
	return m.ml.Join(seeds)
}

// Members returns the live members' metadata.
func (m *Membership) Members() []Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Meta
	for _, a := range m.alive {
		if a.meta.ID != "" {
			out = append(out, a.meta)
		}
	}
	return out
}

// addrs returns the live members' gossip addresses.
func (m *Membership) addrs() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.alive))
	for _, a := range m.alive {
		out = append(out, a.addr)
	}
	return out
}

// Dead returns the ids of members that failed or left and have not rejoined.
func (m *Membership) Dead() map[string]bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]bool, len(m.dead))
	for k := range m.dead {
		out[k] = true
	}
	return out
}

// DeadMembers returns the metadata of members that failed or left and have
// not rejoined, by id.
func (m *Membership) DeadMembers() map[string]Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]Meta, len(m.dead))
	for k, v := range m.dead {
		out[k] = v
	}
	return out
}

// Events delivers membership changes (best effort: it may drop under bursts).
func (m *Membership) Events() <-chan Event { return m.events }

// Leave announces a graceful departure, then shuts down.
func (m *Membership) Leave(timeout time.Duration) error {
	err := m.ml.Leave(timeout)
	m.ml.Shutdown()
	return err
}

// Shutdown stops gossiping without a leave message (peers detect a failure).
func (m *Membership) Shutdown() error { return m.ml.Shutdown() }

// JoinLoop keeps the member joined: every interval it asks seeds for the gossip
// addresses of the other registered nodes and joins those it does not see yet,
// until ctx ends. (Registration in etcd is how nodes find their first peers.)
func (m *Membership) JoinLoop(ctx interface{ Done() <-chan struct{} }, interval time.Duration, seeds func() []string) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		known := map[string]bool{m.Addr(): true}
		for _, a := range m.addrs() {
			known[a] = true
		}
		var todo []string
		for _, s := range seeds() {
			if !known[s] {
				todo = append(todo, s)
			}
		}
		if len(todo) > 0 {
			m.ml.Join(todo) // failures are retried next tick
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
