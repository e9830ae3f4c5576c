package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/switchyard-serving/switchyard/placement"
)

func init() {
	register("placement", "expert placement tools: 'placement simulate' compares ours with round-robin", runPlacement)
}

const placementUsage = `usage: switchyard placement simulate [flags]

Simulates rounds of expert placement under skewed, drifting load and prints,
per round, the imbalance (max/mean node load per layer, averaged over layers;
the worst layer in brackets) of round-robin, of our first placement kept
static, and of ours re-planned each round, plus the replicas ours loaded.

Load comes from --load or from a Zipf law over experts (--zipf). A load file
is JSON {"layers": [[load of expert 0, expert 1, ...], ...]} or CSV rows
"layer,expert,load" (0-based; optional header; missing pairs are 0); its shape
overrides --layers and --experts.`

func runPlacement(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprintln(stderr, placementUsage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	if args[0] != "simulate" {
		fmt.Fprintf(stderr, "switchyard placement: unknown subcommand %q\n\n%s\n", args[0], placementUsage)
		return errUsage
	}
	return runPlacementSimulate(args[1:], stdout, stderr)
}

func runPlacementSimulate(args []string, stdout, stderr io.Writer) error {
	d := placement.DefaultSimConfig()
	fs := newFlags("placement simulate", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, placementUsage)
		fmt.Fprintln(stderr, "\nflags:")
		fs.PrintDefaults()
	}
	loadFile := fs.String("load", "", "load file (.json or .csv) giving the round-0 load per (layer, expert)")
	nodes := fs.Int("nodes", d.Nodes, "expert nodes")
	layers := fs.Int("layers", d.Layers, "MoE layers (without --load)")
	experts := fs.Int("experts", d.Experts, "routed experts per layer (without --load)")
	capacity := fs.Int("capacity", 0, "expert slots per node (0 = just enough for the redundant replicas)")
	zipf := fs.Float64("zipf", d.Zipf, "Zipf exponent s of expert popularity within a layer (without --load)")
	redundant := fs.Float64("redundant", d.Redundant, "redundant replicas as a fraction of layers*experts")
	rounds := fs.Int("rounds", d.Rounds, "planning rounds after the first placement")
	shift := fs.Float64("shift", d.Shift, "fraction of each layer's experts that trade loads at random per round")
	budget := fs.Int("budget", d.Budget, "replicas ours may load per round (0 = none, negative = unlimited)")
	minGain := fs.Float64("min-gain", d.MinGain, "least imbalance reduction a round's moves must achieve")
	seed := fs.Uint64("seed", d.Seed, "random seed of the load draws")
	failRound := fs.Int("fail-round", 0, "kill the first node at the start of this round (0 = never)")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg := placement.SimConfig{Nodes: *nodes, Layers: *layers, Experts: *experts, Capacity: *capacity,
		Zipf: *zipf, Redundant: *redundant, Rounds: *rounds, Shift: *shift, Budget: *budget,
		MinGain: *minGain, Seed: *seed, FailRound: *failRound}
	source := fmt.Sprintf("zipf s=%g", cfg.Zipf)
	if *loadFile != "" {
		load, err := readLoadFile(*loadFile)
		if err != nil {
			return err
		}
		cfg.Load = load
		source = "load " + *loadFile
	}
	rep, err := placement.Simulate(cfg)
	if err != nil {
		return err
	}
	writeSimReport(stdout, rep, source)
	return nil
}

func readLoadFile(path string) ([][]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	format := ""
	switch strings.ToLower(filepath.Ext(path)) {
	case ".json":
		format = "json"
	case ".csv":
		format = "csv"
	}
	load, err := placement.ParseLoad(f, format)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return load, nil
}

func writeSimReport(w io.Writer, rep placement.SimReport, source string) {
	c := rep.Config
	budget := fmt.Sprint(c.Budget)
	if c.Budget < 0 {
		budget = "unlimited"
	}
	fmt.Fprintf(w, "%d nodes x %d slots, %d layers x %d experts, %s, redundant %.1f%%, shift %.0f%%/round, budget %s, min gain %g, seed %d",
		c.Nodes, c.Capacity, c.Layers, c.Experts, source, 100*c.Redundant, 100*c.Shift, budget, c.MinGain, c.Seed)
	if c.FailRound > 0 {
		fmt.Fprintf(w, ", node 0 dies in round %d", c.FailRound)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "max/mean node load per layer, mean over layers (worst layer); moved = replicas loaded that round")
	fmt.Fprintln(w)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "round\tround-robin\tstatic\tours\tmoved\trepairs")
	byRound := map[int]map[string]placement.SimRow{}
	var order []int
	for _, r := range rep.Rows {
		if byRound[r.Round] == nil {
			byRound[r.Round] = map[string]placement.SimRow{}
			order = append(order, r.Round)
		}
		byRound[r.Round][r.Strategy] = r
	}
	cell := func(r placement.SimRow) string { return fmt.Sprintf("%.3f (%.3f)", r.Imbalance, r.WorstLayer) }
	for _, round := range order {
		rr, st, ours := byRound[round][placement.StrategyRoundRobin], byRound[round][placement.StrategyStatic],
			byRound[round][placement.StrategyOurs]
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%d\t%d\n", round, cell(rr), cell(st), cell(ours), ours.Moves, ours.Repairs)
	}
	if c.Rounds > 0 {
		mean := func(s string) string {
			imb, worst, _ := rep.Mean(s, 1)
			return fmt.Sprintf("%.3f (%.3f)", imb, worst)
		}
		_, _, moved := rep.Mean(placement.StrategyOurs, 1)
		fmt.Fprintf(tw, "mean 1-%d\t%s\t%s\t%s\t%.1f\n", c.Rounds, mean(placement.StrategyRoundRobin),
			mean(placement.StrategyStatic), mean(placement.StrategyOurs), moved)
	}
	tw.Flush()
}
