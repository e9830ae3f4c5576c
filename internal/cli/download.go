package cli

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/switchyard-serving/switchyard/internal/agent"
	"github.com/switchyard-serving/switchyard/internal/hub"
)

func init() {
	register("download", "download a Hugging Face checkpoint into a folder and verify it", runDownload)
}

func runDownload(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("download", stderr)
	repo := fs.String("repo", "", "Hugging Face repo id, e.g. ibm-granite/granite-4.0-h-tiny (required)")
	revision := fs.String("revision", "main", "branch, tag or commit (pin a commit for reproducible installs)")
	dir := fs.String("dir", "", "destination folder, created if missing (required)")
	include := fs.String("include", "", "comma-separated globs of the files to fetch, matched like huggingface_hub's allow_patterns ('*' also matches '/'; 'folder/' takes a folder)\n(default "+strings.Join(hub.DefaultInclude, ",")+")")
	endpoint := fs.String("endpoint", "", "Hub URL (default $HF_ENDPOINT, else "+hub.DefaultEndpoint+")")
	verify := fs.Bool("verify", false, "hash every file again, even when the folder's marker says it is complete")
	offline := fs.Bool("offline", false, "do not contact the Hub: succeed only if the folder already holds a complete download of the repo, revision and include list")
	parallel := fs.Int("parallel", 4, "files downloaded at once")
	every := fs.Duration("progress", 5*time.Second, "least time between two progress lines")
	logLevel := fs.String("log-level", "info", "log level on stderr: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: switchyard download --repo ID --dir DIR [--revision REV] [--include GLOBS] [--endpoint URL]

Downloads the files of a Hugging Face repo into DIR, verifies each against the
Hub's SHA-256 (LFS files) or git blob id (others), and writes
`+hub.MarkerName+` once all are in place; prints DIR on success. Exits 0 only
when the folder is complete and verified. Safe to run from several pods on one
shared volume at once: one downloads, the others wait and reuse its result.
The token comes from $HF_TOKEN, or the file named by $HF_TOKEN_FILE.

flags:
`)
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if *repo == "" || *dir == "" {
		return fmt.Errorf("--repo and --dir are required")
	}
	if *parallel < 1 {
		return fmt.Errorf("--parallel %d: want at least 1", *parallel)
	}
	if *every <= 0 {
		return fmt.Errorf("--progress %v: want a positive duration", *every)
	}
	var globs []string
	for g := range strings.SplitSeq(*include, ",") {
		if g = strings.TrimSpace(g); g != "" {
			globs = append(globs, g)
		}
	}
	log, err := agent.NewLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	c, err := hub.New(hub.Options{
		Endpoint:         *endpoint,
		Logger:           log,
		Verify:           *verify,
		Offline:          *offline,
		Parallel:         *parallel,
		ProgressInterval: *every,
	})
	if err != nil {
		return err
	}
	if _, err := c.Download(ctx, *repo, *revision, *dir, globs); err != nil {
		return err
	}
	out, err := filepath.Abs(*dir)
	if err != nil {
		out = *dir
	}
	fmt.Fprintln(stdout, out)
	return nil
}
