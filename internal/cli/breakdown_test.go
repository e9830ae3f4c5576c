package cli

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
)

// bench --breakdown's table: every stage of a step and each product kind,
// with per-step counts that add up to the model's layers, and the
// observers reset afterwards.
func TestDecodeBreakdown(t *testing.T) {
	m, _, err := hybrid.Open(filepath.Join(fixture(t), "hf"), hybrid.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	st := m.NewState()
	if err := m.Forward([]hybrid.Seq{{State: st, Tokens: []int{1, 2}}}); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := decodeBreakdown(&out, m, []*hybrid.State{st}, rand.New(rand.NewPCG(1, 1)), 1, 3, 2, kernels.NewReadProbe(64<<20)); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"6 observed steps", "mamba mixer", "of which mamba conv and scan", "attention mixer", "moe block", "lm head", "forward pass", "µs/call"} {
		if !strings.Contains(text, want) {
			t.Errorf("breakdown lacks %q:\n%s", want, text)
		}
	}
	// The LM head's product runs once per step.
	o := m.W.Output
	head := regexp.MustCompile(`(?m)^\s*` + regexp.QuoteMeta(fmt.Sprintf("%v %v %dx%d", o.DType, o.Layout, o.Rows, o.Cols)) +
		`\s+1\s+(pool|one thread)\s+1\.0\s`)
	if !head.MatchString(text) {
		t.Errorf("no LM-head product row (once per step) in:\n%s", text)
	}
	if kernels.SetProductObserver(nil) != nil || hybrid.SetStageObserver(nil) != nil {
		t.Error("an observer was left set")
	}
	if t.Failed() {
		return
	}
	t.Log("\n" + text)
}
