package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/switchyard-serving/switchyard/internal/telemetry"
)

func init() {
	register("version", "print the version, commit and Go version of this binary (also --version)", runVersion)
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if err := parse(fs, args); err != nil {
		return err
	}
	b := telemetry.BuildInfo()
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(b)
	}
	fmt.Fprintln(stdout, b)
	return nil
}
