package cli

import (
	"context"
	"fmt"
	"io"

	"github.com/switchyard-serving/switchyard/coordinator"
	expertnode "github.com/switchyard-serving/switchyard/expert-node"
	"github.com/switchyard-serving/switchyard/internal/telemetry"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// The role subcommands are the same four steps each: the role's Config with
// its flags (AddFlags: the shared agent flags and the role's own), New, Run
// until the signal context ends, Close. `switchyard up` and the test harness
// (internal/cli/localcluster) build the same Configs and call the same steps.
func init() {
	register("trunk", "run a trunk node (public API, sessions, scheduler, dispatch)", runTrunk)
	register("expert", "run an expert node (computes routed experts for trunk nodes)", runExpert)
	register("coordinator", "run the coordinator (publishes the routing table)", runCoordinator)
}

func runTrunk(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("trunk", stderr)
	cfg := trunknode.DefaultConfig()
	cfg.AddFlags(fs)
	if err := parseRole(fs, args); err != nil {
		return err
	}
	cfg.LogOutput = stderr
	n, err := trunknode.New(cfg)
	if err != nil {
		return err
	}
	defer n.Close()
	kernels.SetSpinWait(cfg.SpinWait) // this process is the node's alone
	hybrid.SetStatePoolLimit(cfg.Memory.StatePoolBytes)
	lis, err := listen(cfg.Listen)
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-n.Ready():
			fmt.Fprintf(stdout, "trunk %s ready on %s\n", cfg.NodeID, lis.Addr())
		case <-ctx.Done():
		}
	}()
	return n.Serve(ctx, lis)
}

func runExpert(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("expert", stderr)
	cfg := expertnode.DefaultConfig()
	cfg.AddFlags(fs)
	if err := parseRole(fs, args); err != nil {
		return err
	}
	cfg.LogOutput = stderr
	tr, err := telemetry.NewTracing(ctx, "expert", cfg.NodeID)
	if err != nil {
		return err
	}
	cfg.Tracing = tr
	if cfg.Listener, err = listen(cfg.Listen); err != nil {
		return err
	}
	n, err := expertnode.New(cfg)
	if err != nil {
		cfg.Listener.Close()
		return err
	}
	defer n.Close()
	kernels.SetSpinWait(cfg.SpinWait) // this process is the node's alone
	fmt.Fprintf(stdout, "expert %s serving on %s\n", cfg.NodeID, cfg.Listener.Addr())
	if d := n.DeviceInfo(); d != "" {
		fmt.Fprintf(stdout, "expert %s computes on %s, %d expert slots in its GPU budget\n", cfg.NodeID, d, n.Slots())
	}
	return n.Run(ctx)
}

func runCoordinator(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("coordinator", stderr)
	cfg := coordinator.DefaultConfig()
	cfg.AddFlags(fs)
	if err := parseRole(fs, args); err != nil {
		return err
	}
	cfg.LogOutput = stderr
	c, err := coordinator.New(cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Fprintf(stdout, "coordinator %s running (%d layers x %d experts)\n", cfg.NodeID, c.Layers(), c.Experts())
	return c.Run(ctx)
}
