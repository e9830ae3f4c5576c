// Package cluster is how Switchyard nodes find each other and the routing table
// through etcd. It owns the etcd key schema:
//
//	/switchyard/nodes/<role>/<id>     NodeInfo JSON, attached to the node's lease
//	/switchyard/routing/current       the routing.Table JSON trunk nodes follow
//	/switchyard/routing/v/<version>   every published version (kept for rollout/debug)
//	/switchyard/routing/pending       the next table during a rollout: expert nodes load
//	                                  the union of current and pending (make-before-break)
//	/switchyard/ready/<id>            highest table version whose assignment expert node <id>
//	                                  holds (pending included), attached to its lease
//	/switchyard/load/<trunk-id>       a trunk's latest activation-count report (delta since
//	                                  its previous report), attached to its lease
//	/switchyard/coordinator/election  leader election among coordinators (concurrency.Election)
//	/switchyard/placement/current     the leader's latest plan summary (predicted load, moves)
//
// Nodes register with a lease and keep it alive; when a process dies its key
// disappears after the TTL. Watchers get the full current list on every change and
// keep their last view when etcd is unreachable (the data plane never stops
// because the control plane is down).
package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/switchyard-serving/switchyard/internal/routing"
)

// Key prefixes.
const (
	Prefix       = "/switchyard/"
	NodesPrefix  = Prefix + "nodes/"
	RoutingKey   = Prefix + "routing/current"
	RoutingVPref = Prefix + "routing/v/"
	ReadyPrefix  = Prefix + "ready/"
	PendingKey   = Prefix + "routing/pending"
	LoadPrefix   = Prefix + "load/"
	ElectionKey  = Prefix + "coordinator/election"
	PlacementKey = Prefix + "placement/current"
)

// Roles.
const (
	RoleTrunk       = "trunk"
	RoleExpert      = "expert"
	RoleCoordinator = "coordinator"
)

// ErrNotFound means the key does not exist (yet).
var ErrNotFound = errors.New("cluster: not found")

// NodeInfo is a node's registration.
type NodeInfo struct {
	ID     string            `json:"id"`
	Role   string            `json:"role"`
	Addr   string            `json:"addr"` // gRPC address
	Meta   map[string]string `json:"meta,omitempty"`
	Joined time.Time         `json:"joined"`
}

// ListNodes returns the registered nodes of a role, sorted by id.
func ListNodes(ctx context.Context, cli *clientv3.Client, role string) ([]NodeInfo, error) {
	ns, _, err := listNodes(ctx, cli, role)
	return ns, err
}

func listNodes(ctx context.Context, cli *clientv3.Client, role string) ([]NodeInfo, int64, error) {
	resp, err := cli.Get(ctx, NodesPrefix+role+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	var out []NodeInfo
	for _, kv := range resp.Kvs {
		var n NodeInfo
		if json.Unmarshal(kv.Value, &n) == nil {
			out = append(out, n)
		}
	}
	sort.Slice(out, func(a, b int) bool { return out[a].ID < out[b].ID })
	return out, resp.Header.Revision, nil
}

// WatchNodes calls fn with the full list of nodes of a role now and after every
// change, until ctx ends. fn runs on the watcher's goroutine and must not block
// for long.
func WatchNodes(ctx context.Context, cli *clientv3.Client, role string, fn func([]NodeInfo)) {
	watchPrefix(ctx, cli, NodesPrefix+role+"/", func() int64 {
		ns, rev, err := listNodes(ctx, cli, role)
		if err == nil {
			fn(ns)
		}
		return rev
	})
}

// watchPrefix calls reload once and again after every event under prefix,
// re-establishing the watch after errors with a small backoff. reload returns the
// etcd revision it read at (0 on error), so no event between the read and the
// watch is missed.
func watchPrefix(ctx context.Context, cli *clientv3.Client, prefix string, reload func() int64) {
	for ctx.Err() == nil {
		rev := reload()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		opts := []clientv3.OpOption{clientv3.WithPrefix()}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev+1))
		}
		ch := cli.Watch(wctx, prefix, opts...)
		for resp := range ch {
			if resp.Err() != nil {
				break
			}
			reload()
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// PublishTable stores t as the current routing table (and under its version).
// It refuses to go backwards: a table whose version is not newer than the current
// one is rejected (compare-and-swap on the current value's revision).
func PublishTable(ctx context.Context, cli *clientv3.Client, t *routing.Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	b, err := t.Marshal()
	if err != nil {
		return err
	}
	cur, err := cli.Get(ctx, RoutingKey)
	if err != nil {
		return err
	}
	var cmp clientv3.Cmp
	if len(cur.Kvs) == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(RoutingKey), "=", 0)
	} else {
		old, err := routing.Unmarshal(cur.Kvs[0].Value)
		if err == nil && old.Version >= t.Version {
			return fmt.Errorf("%w: %d, current %d", ErrNotNewer, t.Version, old.Version)
		}
		cmp = clientv3.Compare(clientv3.ModRevision(RoutingKey), "=", cur.Kvs[0].ModRevision)
	}
	resp, err := cli.Txn(ctx).If(cmp).Then(
		clientv3.OpPut(RoutingKey, string(b)),
		clientv3.OpPut(RoutingVPref+strconv.FormatUint(t.Version, 10), string(b)),
	).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return fmt.Errorf("cluster: routing table changed concurrently; retry")
	}
	return nil
}

// LoadTable reads the current routing table.
func LoadTable(ctx context.Context, cli *clientv3.Client) (*routing.Table, error) {
	resp, err := cli.Get(ctx, RoutingKey)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrNotFound
	}
	return routing.Unmarshal(resp.Kvs[0].Value)
}

// WatchTable calls fn with the current table now (if any) and with every newer
// version, until ctx ends. Tables that fail validation are skipped.
func WatchTable(ctx context.Context, cli *clientv3.Client, fn func(*routing.Table)) {
	watchTableKey(ctx, cli, RoutingKey, fn)
}

// WatchPending calls fn with the pending (rollout) table whenever it changes; nil
// when the key is deleted.
func WatchPending(ctx context.Context, cli *clientv3.Client, fn func(*routing.Table)) {
	var last uint64
	var had bool
	watchPrefix(ctx, cli, PendingKey, func() int64 {
		resp, err := cli.Get(ctx, PendingKey)
		if err != nil {
			return 0
		}
		if len(resp.Kvs) == 0 {
			if had {
				had, last = false, 0
				fn(nil)
			}
			return resp.Header.Revision
		}
		if t, err := routing.Unmarshal(resp.Kvs[0].Value); err == nil && (t.Version != last || !had) {
			had, last = true, t.Version
			fn(t)
		}
		return resp.Header.Revision
	})
}

// LoadPending reads the table being rolled out (ErrNotFound when none).
func LoadPending(ctx context.Context, cli *clientv3.Client) (*routing.Table, error) {
	resp, err := cli.Get(ctx, PendingKey)
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, ErrNotFound
	}
	return routing.Unmarshal(resp.Kvs[0].Value)
}

// PublishPending stores the table a rollout is moving to.
func PublishPending(ctx context.Context, cli *clientv3.Client, t *routing.Table) error {
	if err := t.Validate(); err != nil {
		return err
	}
	b, err := t.Marshal()
	if err != nil {
		return err
	}
	_, err = cli.Put(ctx, PendingKey, string(b))
	return err
}

// ClearPendingVersion ends the rollout of table version v: the pending key is
// deleted only while it still holds that version (a newer leader's pending
// table is left alone). No pending table, or another version, is not an error.
func ClearPendingVersion(ctx context.Context, cli *clientv3.Client, v uint64) error {
	resp, err := cli.Get(ctx, PendingKey)
	if err != nil || len(resp.Kvs) == 0 {
		return err
	}
	t, err := routing.Unmarshal(resp.Kvs[0].Value)
	if err == nil && t.Version != v {
		return nil
	}
	_, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(PendingKey), "=", resp.Kvs[0].ModRevision)).
		Then(clientv3.OpDelete(PendingKey)).Commit()
	return err
}

// ErrNotNewer means a table was not published because the current one is as
// new or newer (another leader published meanwhile).
var ErrNotNewer = errors.New("cluster: routing table version is not newer than the current one")

// ReadyVersions returns each expert node's reported ready version.
func ReadyVersions(ctx context.Context, cli *clientv3.Client) (map[string]uint64, error) {
	resp, err := cli.Get(ctx, ReadyPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, kv := range resp.Kvs {
		v, err := strconv.ParseUint(string(kv.Value), 10, 64)
		if err == nil {
			out[strings.TrimPrefix(string(kv.Key), ReadyPrefix)] = v
		}
	}
	return out, nil
}

// LoadReport is a trunk's activation counts since its previous report.
type LoadReport struct {
	Trunk  string     `json:"trunk"`
	Seq    uint64     `json:"seq"`
	Counts [][]uint64 `json:"counts"` // [layer][expert] routed pairs
	At     time.Time  `json:"at"`
}

// ReportLoad writes a trunk's load report (attached to its registration lease).
func ReportLoad(ctx context.Context, r *Registration, rep LoadReport) error {
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	return r.Put(ctx, LoadPrefix+rep.Trunk, string(b))
}

// WatchLoad calls fn with every new load report.
func WatchLoad(ctx context.Context, cli *clientv3.Client, fn func(LoadReport)) {
	seen := map[string]uint64{}
	watchPrefix(ctx, cli, LoadPrefix, func() int64 {
		resp, err := cli.Get(ctx, LoadPrefix, clientv3.WithPrefix())
		if err != nil {
			return 0
		}
		for _, kv := range resp.Kvs {
			var rep LoadReport
			if json.Unmarshal(kv.Value, &rep) == nil && rep.Seq != seen[rep.Trunk] {
				seen[rep.Trunk] = rep.Seq
				fn(rep)
			}
		}
		return resp.Header.Revision
	})
}

func watchTableKey(ctx context.Context, cli *clientv3.Client, key string, fn func(*routing.Table)) {
	var last uint64
	watchPrefix(ctx, cli, key, func() int64 {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return 0
		}
		if len(resp.Kvs) > 0 {
			if t, err := routing.Unmarshal(resp.Kvs[0].Value); err == nil && t.Version > last {
				last = t.Version
				fn(t)
			}
		}
		return resp.Header.Revision
	})
}

// ReportReady records that an expert node has loaded the assignment of a table
// version (attached to the node's registration lease).
func ReportReady(ctx context.Context, r *Registration, node string, version uint64) error {
	return r.Put(ctx, ReadyPrefix+node, strconv.FormatUint(version, 10))
}

// GossipMetaKey is the NodeInfo.Meta key holding a node's gossip address.
const GossipMetaKey = "gossip"

// SlotsMetaKey is the NodeInfo.Meta key holding an expert node's own capacity
// in expert slots (GPU nodes: what their memory budget holds); absent means
// the coordinator's cluster-wide setting.
const SlotsMetaKey = "slots"

// GossipSeeds returns the gossip addresses of every registered node (all roles).
func GossipSeeds(ctx context.Context, cli *clientv3.Client) []string {
	resp, err := cli.Get(ctx, NodesPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil
	}
	var out []string
	for _, kv := range resp.Kvs {
		var n NodeInfo
		if json.Unmarshal(kv.Value, &n) == nil && n.Meta[GossipMetaKey] != "" {
			out = append(out, n.Meta[GossipMetaKey])
		}
	}
	return out
}

// EtcdTLS names the PEM files for TLS to etcd (all empty: plaintext).
type EtcdTLS struct {
	CA, Cert, Key string
}

// NewClient connects to etcd, with TLS when files are given.
func NewClient(endpoints []string, t EtcdTLS) (*clientv3.Client, error) {
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if t.CA != "" || t.Cert != "" {
		tc := &tls.Config{MinVersion: tls.VersionTLS12}
		if t.CA != "" {
			b, err := os.ReadFile(t.CA)
			if err != nil {
				return nil, fmt.Errorf("cluster: etcd CA: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(b) {
				return nil, fmt.Errorf("cluster: etcd CA %s holds no PEM certificate", t.CA)
			}
			tc.RootCAs = pool
		}
		if t.Cert != "" {
			c, err := tls.LoadX509KeyPair(t.Cert, t.Key)
			if err != nil {
				return nil, fmt.Errorf("cluster: etcd client certificate: %w", err)
			}
			tc.Certificates = []tls.Certificate{c}
		}
		cfg.TLS = tc
	}
	return clientv3.New(cfg)
}
