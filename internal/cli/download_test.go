package cli

import (
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeHubServer serves one repo, org/m at main, with a JSON file and an LFS
// safetensors file.
func fakeHubServer(t *testing.T) *httptest.Server {
	t.Helper()
	const commit = "0123456789abcdef0123456789abcdef01234567"
	files := map[string]string{"config.json": `{"model_type":"granitemoehybrid"}`, "model.safetensors": strings.Repeat("w", 5000)}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/models/org/m/revision/main":
			blob := sha1.New()
			fmt.Fprintf(blob, "blob %d\x00%s", len(files["config.json"]), files["config.json"])
			sum := sha256.Sum256([]byte(files["model.safetensors"]))
			_ = json.NewEncoder(w).Encode(map[string]any{"sha": commit, "siblings": []map[string]any{
				{"rfilename": "config.json", "size": len(files["config.json"]), "blobId": hex.EncodeToString(blob.Sum(nil))},
				{"rfilename": "model.safetensors", "size": 5000, "blobId": strings.Repeat("b", 40),
					"lfs": map[string]any{"size": 5000, "sha256": hex.EncodeToString(sum[:]), "pointerSize": 134}},
			}})
		case "/org/m/resolve/" + commit + "/config.json":
			fmt.Fprint(w, files["config.json"])
		case "/org/m/resolve/" + commit + "/model.safetensors":
			fmt.Fprint(w, files["model.safetensors"])
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestDownloadCommand(t *testing.T) {
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HF_TOKEN_FILE", "")
	srv := fakeHubServer(t)
	dir := filepath.Join(t.TempDir(), "models", "m")
	cases := []struct {
		name string
		args []string
		code int
		want string // substring of stdout (or stderr when code != 0)
	}{
		{"download", []string{"download", "--repo", "org/m", "--dir", dir, "--endpoint", srv.URL}, 0, dir + "\n"},
		{"again from the marker", []string{"download", "--repo", "org/m", "--dir", dir, "--endpoint", srv.URL, "--log-format", "json"}, 0, dir + "\n"},
		{"offline", []string{"download", "--repo", "org/m", "--dir", dir, "--offline", "--verify"}, 0, dir + "\n"},
		{"unknown repo", []string{"download", "--repo", "org/nope", "--dir", t.TempDir(), "--endpoint", srv.URL}, 1, "repo or revision not found: org/nope@main"},
		{"include matches nothing", []string{"download", "--repo", "org/m", "--dir", t.TempDir(), "--endpoint", srv.URL, "--include", "*.gguf, tokenizer*"}, 1, "no file matches"},
		{"missing repo", []string{"download", "--dir", dir}, 1, "--repo and --dir are required"},
		{"bad flag", []string{"download", "--nope"}, 2, "usage: switchyard download"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := run(tc.args...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tc.code, stdout, stderr)
			}
			text := stdout
			if code != 0 {
				text = stderr
			}
			if !strings.Contains(text, tc.want) {
				t.Fatalf("output %q does not contain %q", text, tc.want)
			}
		})
	}
	b, err := os.ReadFile(filepath.Join(dir, ".switchyard-download.json"))
	if err != nil || !strings.Contains(string(b), `"completed_at"`) {
		t.Fatalf("marker: %s %v", b, err)
	}
}
