package helmtest

import (
	"slices"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// By default the chart runs encrypted gossip on every role and ships
// NetworkPolicies: etcd reachable only from the release's pods, expert nodes
// only from trunks, gossip only within the release.
func TestGossipAndNetworkPolicies(t *testing.T) {
	m := render(t, nil, nil)
	byName := map[string]*networkingv1.NetworkPolicy{}
	for _, np := range m.netPols {
		byName[np.Name] = np
	}
	for _, c := range []string{"trunk", "expert", "coordinator", "etcd"} {
		if byName[fullname+"-"+c] == nil {
			t.Fatalf("no NetworkPolicy for %s (have %v)", c, keys(byName))
		}
	}
	expert := byName[fullname+"-expert"]
	var grpcFrom []string
	for _, r := range expert.Spec.Ingress {
		for _, p := range r.Ports {
			if p.Port != nil && p.Port.String() == "grpc" {
				for _, f := range r.From {
					if f.PodSelector != nil {
						grpcFrom = append(grpcFrom, f.PodSelector.MatchLabels["app.kubernetes.io/component"])
					}
				}
			}
		}
	}
	if !slices.Equal(grpcFrom, []string{"trunk"}) {
		t.Fatalf("expert gRPC reachable from %v, want only trunks", grpcFrom)
	}
	etcd := byName[fullname+"-etcd"]
	if r := etcd.Spec.Ingress[0]; len(r.From) != 1 || r.From[0].PodSelector.MatchLabels["app.kubernetes.io/instance"] == "" {
		t.Fatalf("etcd client port open beyond the release: %+v", r.From)
	}
	for _, ss := range m.statefulSets {
		c := ss.Spec.Template.Spec.Containers[0]
		if !slices.Contains([]string{"trunk", "expert"}, c.Args[0]) {
			continue
		}
		args := strings.Join(c.Args, " ")
		if !strings.Contains(args, "--gossip-bind=0.0.0.0:7946") || !strings.Contains(args, "--gossip-advertise=$(POD_IP):7946") {
			t.Fatalf("%s runs without gossip: %s", c.Args[0], args)
		}
		key := false
		for _, e := range c.Env {
			key = key || (e.Name == "SWITCHYARD_GOSSIP_KEY" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil)
		}
		if !key {
			t.Fatalf("%s gossips without the encryption key", c.Args[0])
		}
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
