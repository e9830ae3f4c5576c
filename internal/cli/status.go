package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"text/tabwriter"
	"time"

	"github.com/switchyard-serving/switchyard/coordinator"
	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/cluster"
)

func init() {
	register("status", "show the cluster: nodes, health, placement version, per-node load and imbalance", runStatus)
}

// etcdFlags adds --etcd and the etcd client TLS flags (defaults from
// $SWITCHYARD_ETCD_CA/_CERT/_KEY, as the Helm chart sets them).
func etcdFlags(fs *flag.FlagSet, def string) func() ([]string, cluster.EtcdTLS) {
	eps := fs.String("etcd", def, "comma-separated etcd endpoints")
	ca := fs.String("etcd-ca", os.Getenv("SWITCHYARD_ETCD_CA"), "CA bundle for etcd TLS (PEM)")
	cert := fs.String("etcd-cert", os.Getenv("SWITCHYARD_ETCD_CERT"), "client certificate for etcd TLS (PEM)")
	key := fs.String("etcd-key", os.Getenv("SWITCHYARD_ETCD_KEY"), "client key for etcd TLS (PEM)")
	return func() ([]string, cluster.EtcdTLS) {
		return agent.Endpoints(*eps), cluster.EtcdTLS{CA: *ca, Cert: *cert, Key: *key}
	}
}

func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("status", stderr)
	etcdOpts := etcdFlags(fs, "127.0.0.1:2379")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	eps, etls := etcdOpts()
	cli, err := cluster.NewClient(eps, etls)
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type nodeRow struct {
		cluster.NodeInfo
		Ready     uint64  `json:"ready_version,omitempty"`
		Predicted float64 `json:"predicted_load,omitempty"`
		Replicas  int     `json:"replicas,omitempty"`
	}
	out := struct {
		Leader  string               `json:"leader"`
		Version uint64               `json:"routing_version"`
		Pending uint64               `json:"pending_version,omitempty"`
		Summary *coordinator.Summary `json:"placement,omitempty"`
		Nodes   []nodeRow            `json:"nodes"`
	}{}
	out.Leader, _ = coordinator.Leader(ctx, cli)
	t, err := cluster.LoadTable(ctx, cli)
	if err != nil && err != cluster.ErrNotFound {
		return fmt.Errorf("etcd at %v: %w", eps, err)
	}
	if t != nil {
		out.Version = t.Version
	}
	if resp, err := cli.Get(ctx, cluster.PendingKey); err == nil && len(resp.Kvs) > 0 {
		var p struct{ Version uint64 }
		json.Unmarshal(resp.Kvs[0].Value, &p)
		out.Pending = p.Version
	}
	if resp, err := cli.Get(ctx, cluster.PlacementKey); err == nil && len(resp.Kvs) > 0 {
		var s coordinator.Summary
		if json.Unmarshal(resp.Kvs[0].Value, &s) == nil {
			out.Summary = &s
		}
	}
	ready, _ := cluster.ReadyVersions(ctx, cli)
	for _, role := range []string{cluster.RoleCoordinator, cluster.RoleTrunk, cluster.RoleExpert} {
		ns, err := cluster.ListNodes(ctx, cli, role)
		if err != nil {
			return err
		}
		for _, n := range ns {
			r := nodeRow{NodeInfo: n, Ready: ready[n.ID]}
			if out.Summary != nil {
				r.Predicted = out.Summary.NodeLoad[n.ID]
			}
			if t != nil {
				r.Replicas = len(t.Assigned(n.ID))
			}
			out.Nodes = append(out.Nodes, r)
		}
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(stdout, "leader: %s   routing table: v%d", orDash(out.Leader), out.Version)
	if out.Pending > out.Version {
		fmt.Fprintf(stdout, "   rollout in progress to v%d", out.Pending)
	}
	fmt.Fprintln(stdout)
	if s := out.Summary; s != nil {
		fmt.Fprintf(stdout, "placement v%d: %d replicas, predicted imbalance (max/mean) %.3f, last round moved %d (%d repairs) at %s\n",
			s.Version, s.Replicas, s.Imbalance, s.Moves, s.Repairs, s.At.Format(time.RFC3339))
	}
	sort.SliceStable(out.Nodes, func(a, b int) bool { return out.Nodes[a].Role < out.Nodes[b].Role })
	w := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "ROLE\tID\tADDRESS\tHEALTH\tEXPERTS\tPREDICTED LOAD\tJOINED")
	for _, n := range out.Nodes {
		health := "registered"
		if n.Role == cluster.RoleExpert {
			health = "loading"
			if t != nil && n.Ready >= t.Version {
				health = "ready"
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%d\t%.1f\t%s\n", n.Role, n.ID, orDash(n.Addr), health, n.Replicas, n.Predicted, n.Joined.Format(time.RFC3339))
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
