package cli

import (
	"strconv"
	"strings"
	"testing"
)

// TestBenchClusterSmoke runs bench-cluster on the built-in model (three
// nodes and the in-process baseline in this process, loopback): a row per
// session count, with the whole run's ratio and its prefill and decode
// phases apart.
func TestBenchClusterSmoke(t *testing.T) {
	code, stdout, stderr := run("bench-cluster", "--sessions", "1,2", "--prompt", "3", "--tokens", "4", "--reps", "1")
	if code != 0 {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, stdout, stderr)
	}
	var header []string
	rows := map[string]map[string]string{}
	for _, line := range strings.Split(stdout, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && f[0] == "device":
			header = f // names of two words count twice: "in-process tok/s"
		case header != nil && len(f) > 7 && f[0] == "cpu":
			rows[f[1]] = map[string]string{"ratio": f[4], "prefill": f[5], "decode": f[6]}
		}
	}
	if len(header) < 9 || header[6] != "ratio" || header[7] != "prefill" || header[8] != "decode" {
		t.Fatalf("unexpected header %q\n%s", header, stdout)
	}
	for _, s := range []string{"1", "2"} {
		r, ok := rows[s]
		if !ok {
			t.Fatalf("no row for %s sessions\n%s", s, stdout)
		}
		// The built-in model's decode steps take microseconds in process,
		// so its decode ratio can print as 0.00, or as "-" when every token
		// of a run came in its first chunk (no decode rate to compare);
		// the others are positive.
		for col, least := range map[string]float64{"ratio": 1e-9, "prefill": 1e-9, "decode": 0} {
			if col == "decode" && r[col] == "-" {
				continue
			}
			if v, err := strconv.ParseFloat(r[col], 64); err != nil || v < least {
				t.Errorf("%s sessions: %s %q, want a ratio of at least %g", s, col, r[col], least)
			}
		}
	}
}
