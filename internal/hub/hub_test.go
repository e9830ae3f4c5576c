package hub

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	testRepo    = "org/model"
	testCommit  = "0123456789abcdef0123456789abcdef01234567"
	otherCommit = "89abcdef0123456789abcdef0123456789abcdef"
)

// fakeHub serves the two Hub endpoints Download uses, for one repo, with
// knobs for the failures under test.
type fakeHub struct {
	srv, cdn *httptest.Server

	mu      sync.Mutex
	commit  string
	files   map[string][]byte // path -> content
	lfs     map[string]bool   // stored in LFS (sha256 listed; redirected to the CDN when cdn is on)
	token   string            // required when set: missing -> 401, wrong -> 403
	useCDN  bool
	noRange bool                     // ignore Range headers (answer 200)
	corrupt map[string]bool          // serve content that differs from the listing
	fail    map[string]int           // answer this many 503 (Retry-After: 7) first
	cut     map[string]int           // once: send this many bytes, then drop the connection
	gate    map[string]chan struct{} // hold the answer until the channel closes
	started chan string              // receives the path of each gated request

	apiCalls int
	gets     map[string]int // file requests at the hub, by path
	ranges   []string       // "path range" of each file request that reached content
	hubAuth  []string       // Authorization headers at the hub
	cdnAuth  []string       // Authorization headers at the CDN
}

func content(seed uint64, n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewChaCha8([32]byte{byte(seed)}))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func newFakeHub(t *testing.T) *fakeHub {
	h := &fakeHub{
		commit: testCommit,
		files: map[string][]byte{
			"config.json":                       []byte(`{"model_type":"granitemoehybrid"}` + "\n"),
			"tokenizer.json":                    []byte(`{"version":"1.0"}`),
			"tokenizer_config.json":             []byte(`{}`),
			"model.safetensors.index.json":      []byte(`{"weight_map":{}}`),
			"model-00001-of-00002.safetensors":  content(1, 600<<10),
			"model-00002-of-00002.safetensors":  content(2, 300<<10+7),
			"README.md":                         []byte("# not selected by default\n"),
			"onnx/nested/weights.onnx_data.bin": content(3, 1000),
		},
		lfs:     map[string]bool{"model-00001-of-00002.safetensors": true, "model-00002-of-00002.safetensors": true, "onnx/nested/weights.onnx_data.bin": true},
		corrupt: map[string]bool{},
		fail:    map[string]int{},
		cut:     map[string]int{},
		gate:    map[string]chan struct{}{},
		started: make(chan string, 16),
		gets:    map[string]int{},
	}
	h.srv = httptest.NewServer(http.HandlerFunc(h.serveHub))
	h.cdn = httptest.NewServer(http.HandlerFunc(h.serveCDN))
	t.Cleanup(h.srv.Close)
	t.Cleanup(h.cdn.Close)
	return h
}

func gitBlob(b []byte) string {
	s := sha1.New()
	fmt.Fprintf(s, "blob %d\x00", len(b))
	s.Write(b)
	return hex.EncodeToString(s.Sum(nil))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// authorized checks the token and answers 401/403 when it is wrong.
func (h *fakeHub) authorized(w http.ResponseWriter, r *http.Request) bool {
	h.mu.Lock()
	tok := h.token
	h.hubAuth = append(h.hubAuth, r.Header.Get("Authorization"))
	h.mu.Unlock()
	switch got := r.Header.Get("Authorization"); {
	case tok == "":
		return true
	case got == "":
		w.Header().Set("X-Error-Message", "Invalid username or password.")
		w.WriteHeader(http.StatusUnauthorized)
		return false
	case got != "Bearer "+tok:
		w.Header().Set("X-Error-Message", "Access to model org/model is restricted.")
		w.WriteHeader(http.StatusForbidden)
		return false
	}
	return true
}

func (h *fakeHub) serveHub(w http.ResponseWriter, r *http.Request) {
	p := r.URL.EscapedPath()
	if rest, ok := strings.CutPrefix(p, "/api/models/"); ok {
		h.mu.Lock()
		h.apiCalls++
		h.mu.Unlock()
		if !h.authorized(w, r) {
			return
		}
		repo, rev, ok := strings.Cut(rest, "/revision/")
		h.mu.Lock()
		defer h.mu.Unlock()
		if !ok || repo != testRepo || r.URL.Query().Get("blobs") != "true" {
			w.Header().Set("X-Error-Code", "RepoNotFound")
			http.Error(w, `{"error":"Repository not found"}`, http.StatusNotFound)
			return
		}
		if rev != "main" && rev != h.commit {
			w.Header().Set("X-Error-Code", "RevisionNotFound")
			http.Error(w, `{"error":"Invalid rev id: `+rev+`"}`, http.StatusNotFound)
			return
		}
		type lfs struct {
			Size        int    `json:"size"`
			SHA256      string `json:"sha256"`
			PointerSize int    `json:"pointerSize"`
		}
		type sibling struct {
			RFilename string `json:"rfilename"`
			Size      int    `json:"size"`
			BlobID    string `json:"blobId"`
			LFS       *lfs   `json:"lfs,omitempty"`
		}
		var sibs []sibling
		for name, b := range h.files {
			s := sibling{RFilename: name, Size: len(b), BlobID: gitBlob(b)}
			if h.lfs[name] {
				s.BlobID = gitBlob([]byte("version https://git-lfs.github.com/spec/v1\n" + name))
				s.LFS = &lfs{Size: len(b), SHA256: sha256Hex(b), PointerSize: 134}
			}
			sibs = append(sibs, s)
		}
		slices.SortFunc(sibs, func(a, b sibling) int { return strings.Compare(a.RFilename, b.RFilename) })
		_ = json.NewEncoder(w).Encode(map[string]any{"id": testRepo, "sha": h.commit, "siblings": sibs})
		return
	}
	repo, rest, ok := strings.Cut(strings.TrimPrefix(p, "/"), "/resolve/")
	if !ok || repo != testRepo {
		http.NotFound(w, r)
		return
	}
	commit, name, _ := strings.Cut(rest, "/")
	h.mu.Lock()
	h.gets[name]++
	wrongCommit, lfs, cdn := commit != h.commit, h.lfs[name], h.useCDN
	h.mu.Unlock()
	if !h.authorized(w, r) {
		return
	}
	if wrongCommit {
		http.NotFound(w, r)
		return
	}
	if lfs && cdn {
		// Like the Hub: LFS content lives on another host.
		http.Redirect(w, r, h.cdn.URL+"/blobs/"+name+"?signature=x", http.StatusFound)
		return
	}
	h.serveContent(w, r, name)
}

func (h *fakeHub) serveCDN(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	h.cdnAuth = append(h.cdnAuth, r.Header.Get("Authorization"))
	h.mu.Unlock()
	h.serveContent(w, r, strings.TrimPrefix(r.URL.Path, "/blobs/"))
}

func (h *fakeHub) serveContent(w http.ResponseWriter, r *http.Request, name string) {
	h.mu.Lock()
	b, ok := h.files[name]
	fail, cut, gate, corrupt, noRange := h.fail[name], h.cut[name], h.gate[name], h.corrupt[name], h.noRange
	if fail > 0 {
		h.fail[name]--
	} else {
		delete(h.cut, name)
		h.ranges = append(h.ranges, strings.TrimSpace(name+" "+r.Header.Get("Range")))
	}
	h.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	if fail > 0 {
		w.Header().Set("Retry-After", "7")
		http.Error(w, "overloaded", http.StatusServiceUnavailable)
		return
	}
	if gate != nil {
		h.started <- name
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	if corrupt {
		b = slices.Clone(b)
		b[len(b)/2] ^= 0xff
	}
	if cut > 0 {
		w.Header().Set("Content-Length", fmt.Sprint(len(b)))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(b[:cut])
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // drops the connection mid-body
	}
	if noRange {
		r.Header.Del("Range")
	}
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

func (h *fakeHub) getCount(name string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gets[name]
}

// snap returns copies of what the hub recorded.
func (h *fakeHub) snap() (ranges, hubAuth, cdnAuth []string, apiCalls int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.ranges), slices.Clone(h.hubAuth), slices.Clone(h.cdnAuth), h.apiCalls
}

func (h *fakeHub) api() int {
	_, _, _, n := h.snap()
	return n
}

func (h *fakeHub) totalGets() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.gets {
		n += c
	}
	return n
}

// syncBuffer collects log output from several goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testClient is a Client of h whose backoff sleeps are recorded, not slept.
type testClient struct {
	*Client
	logs   *syncBuffer
	mu     sync.Mutex
	sleeps []time.Duration
}

func newTestClient(t *testing.T, h *fakeHub, token string, opt func(*Options)) *testClient {
	t.Helper()
	t.Setenv("HF_TOKEN", "")
	t.Setenv("HF_TOKEN_FILE", "")
	tc := &testClient{logs: &syncBuffer{}}
	o := Options{
		Endpoint: h.srv.URL,
		Token:    token,
		Logger:   slog.New(slog.NewTextHandler(tc.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if opt != nil {
		opt(&o)
	}
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	c.sleep = func(ctx context.Context, d time.Duration) error {
		tc.mu.Lock()
		tc.sleeps = append(tc.sleeps, d)
		tc.mu.Unlock()
		return ctx.Err()
	}
	tc.Client = c
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("client log:\n%s", tc.logs)
		}
	})
	return tc
}

// waitFor polls cond until it holds (at most 5s).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var defaultFiles = []string{"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"}

// checkFolder asserts dir holds exactly the named files of h (plus the
// marker and lock) with the right content, and a marker that lists them.
func checkFolder(t *testing.T, h *fakeHub, dir string, names []string) *Marker {
	t.Helper()
	var got []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		got = append(got, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(names), MarkerName, lockName)
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("folder holds %q, want %q", got, want)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(n)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b, h.files[n]) {
			t.Fatalf("%s: content differs (%d bytes, want %d)", n, len(b), len(h.files[n]))
		}
	}
	raw, err := os.ReadFile(filepath.Join(dir, MarkerName))
	if err != nil {
		t.Fatal(err)
	}
	var m Marker
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("marker: %v\n%s", err, raw)
	}
	if m.Version != 1 || m.Repo != testRepo || m.Commit != h.commit || m.CompletedAt.IsZero() || len(m.Files) != len(names) {
		t.Fatalf("marker %s", raw)
	}
	for i, f := range m.Files {
		b := h.files[f.Path]
		if f.Path != names[i] || f.Size != int64(len(b)) {
			t.Fatalf("marker file %d: %+v, want %s of %d bytes", i, f, names[i], len(b))
		}
		if h.lfs[f.Path] && (f.SHA256 != sha256Hex(b) || f.Blob != "") || !h.lfs[f.Path] && (f.Blob != gitBlob(b) || f.SHA256 != "") {
			t.Fatalf("marker file %s: hashes %+v", f.Path, f)
		}
	}
	return &m
}

func TestDownloadCases(t *testing.T) {
	shard1, shard2 := "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
	cases := []struct {
		name     string
		token    string                                     // the client's token
		setup    func(t *testing.T, h *fakeHub, dir string) // before Download
		repo     string                                     // default testRepo
		revision string                                     // default "main"
		include  []string
		wantErr  []string // substrings of the error; none: success
		check    func(t *testing.T, h *fakeHub, c *testClient, dir string, err error)
	}{
		{
			name: "fresh download with LFS and non-LFS files",
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				for _, n := range defaultFiles {
					if g := h.getCount(n); g != 1 {
						t.Errorf("%s requested %d times, want 1", n, g)
					}
				}
				if g := h.getCount("README.md"); g != 0 {
					t.Errorf("README.md requested %d times; not in the default include", g)
				}
			},
		},
		{
			name:    "include globs follow fnmatch and reach into folders",
			include: []string{"*.json", "onnx/"},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, []string{"config.json", "model.safetensors.index.json", "onnx/nested/weights.onnx_data.bin", "tokenizer.json", "tokenizer_config.json"})
			},
		},
		{
			name: "resume from a .part file with Range",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				writeFile(t, filepath.Join(dir, shard1+".part"), h.files[shard1][:100000])
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				if ranges, _, _, _ := h.snap(); !slices.Contains(ranges, shard1+" bytes=100000-") {
					t.Fatalf("no Range request from byte 100000: %q", ranges)
				}
			},
		},
		{
			name: "a server without Range support restarts from zero",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				h.noRange = true
				writeFile(t, filepath.Join(dir, shard1+".part"), h.files[shard1][:100000])
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				if g := h.getCount(shard1); g != 1 {
					t.Fatalf("%s requested %d times, want 1", shard1, g)
				}
			},
		},
		{
			name: "a stale .part of other content is downloaded again from zero",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				writeFile(t, filepath.Join(dir, shard1+".part"), content(9, 5000))
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				if g := h.getCount(shard1); g != 2 {
					t.Fatalf("%s requested %d times, want 2 (resume, then from zero)", shard1, g)
				}
			},
		},
		{
			name:    "corrupted download: hash mismatch names the file and removes it",
			setup:   func(t *testing.T, h *fakeHub, dir string) { h.corrupt[shard2] = true },
			wantErr: []string{shard2, "sha256 expected", "removed"},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				var hm *HashMismatchError
				if !errors.As(err, &hm) || hm.Path != shard2 || hm.Want != sha256Hex(h.files[shard2]) || hm.Got == hm.Want {
					t.Fatalf("want a HashMismatchError for %s, got %v", shard2, err)
				}
				for _, p := range []string{shard2, shard2 + ".part", MarkerName} {
					if _, err := os.Stat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("%s is still there (%v)", p, err)
					}
				}
			},
		},
		{
			name: "corrupted non-LFS download is caught by the git blob hash",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				h.corrupt["config.json"] = true
			},
			wantErr: []string{"config.json", "git-blob-sha1 expected " + gitBlob([]byte(`{"model_type":"granitemoehybrid"}`+"\n"))},
		},
		{
			name: "a corrupted file already in the folder is replaced",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				bad := slices.Clone(h.files[shard2])
				bad[0] ^= 1
				writeFile(t, filepath.Join(dir, shard2), bad)
				writeFile(t, filepath.Join(dir, "config.json"), h.files["config.json"])
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				if g := h.getCount(shard2); g != 1 {
					t.Fatalf("%s requested %d times, want 1", shard2, g)
				}
				if g := h.getCount("config.json"); g != 0 {
					t.Fatalf("config.json was present and valid, yet requested %d times", g)
				}
			},
		},
		{
			name: "transient errors are retried: 503 with Retry-After, a dropped connection resumes",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				h.fail["config.json"] = 2
				h.cut[shard1] = 70000
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				if ranges, _, _, _ := h.snap(); !slices.Contains(ranges, shard1+" bytes=70000-") {
					t.Fatalf("the dropped download did not resume from byte 70000: %q", ranges)
				}
				c.mu.Lock()
				defer c.mu.Unlock()
				if n := len(slices.DeleteFunc(slices.Clone(c.sleeps), func(d time.Duration) bool { return d != 7*time.Second })); n != 2 {
					t.Fatalf("backoff waits %v: want two of 7s (Retry-After)", c.sleeps)
				}
			},
		},
		{
			name:    "401 without a token",
			setup:   func(t *testing.T, h *fakeHub, dir string) { h.token = "secret" },
			wantErr: []string{"repo org/model needs a token", "HF_TOKEN", "model.download.token.existingSecret", "401"},
		},
		{
			name:    "403 with a token that has no access",
			token:   "wrong",
			setup:   func(t *testing.T, h *fakeHub, dir string) { h.token = "secret" },
			wantErr: []string{"token was refused or has no access", "403", "restricted"},
		},
		{
			name:    "404 repo",
			repo:    "org/missing",
			wantErr: []string{"repo or revision not found: org/missing@main", "404"},
		},
		{
			name:     "404 revision",
			revision: "v9",
			wantErr:  []string{"repo or revision not found: org/model@v9"},
		},
		{
			name:    "include that matches nothing",
			include: []string{"*.gguf"},
			wantErr: []string{"no file matches", "*.gguf", "config.json"},
		},
		{
			name:  "a redirect to another host does not carry the token",
			token: "secret",
			setup: func(t *testing.T, h *fakeHub, dir string) {
				h.token = "secret"
				h.useCDN = true
			},
			check: func(t *testing.T, h *fakeHub, c *testClient, dir string, err error) {
				checkFolder(t, h, dir, defaultFiles)
				_, hubAuth, cdnAuth, _ := h.snap()
				if len(cdnAuth) != 2 {
					t.Fatalf("CDN saw %d requests, want 2", len(cdnAuth))
				}
				for _, a := range cdnAuth {
					if a != "" {
						t.Fatalf("the CDN received Authorization %q", a)
					}
				}
				for _, a := range hubAuth {
					if a != "Bearer secret" {
						t.Fatalf("the hub received Authorization %q", a)
					}
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := newFakeHub(t)
			dir := t.TempDir()
			if tc.setup != nil {
				tc.setup(t, h, dir)
			}
			c := newTestClient(t, h, tc.token, nil)
			repo, rev := cmpOr(tc.repo, testRepo), cmpOr(tc.revision, "main")
			_, err := c.Download(context.Background(), repo, rev, dir, tc.include)
			if len(tc.wantErr) == 0 && err != nil {
				t.Fatalf("Download: %v", err)
			}
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("Download succeeded, want an error")
				}
				for _, s := range tc.wantErr {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not contain %q", err, s)
					}
				}
				if _, serr := os.Stat(filepath.Join(dir, MarkerName)); serr == nil {
					t.Errorf("a failed download left a marker")
				}
			}
			if tc.check != nil {
				tc.check(t, h, c, dir, err)
			}
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A folder with a complete marker is served from the marker: no file
// requests, and none at all when the revision is the pinned commit or the
// client is offline; --verify re-hashes and repairs.
func TestDownloadCompleteMarker(t *testing.T) {
	h := newFakeHub(t)
	dir := t.TempDir()
	ctx := context.Background()
	c := newTestClient(t, h, "", nil)
	first, err := c.Download(ctx, testRepo, "main", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkFolder(t, h, dir, defaultFiles)
	gets, api := h.totalGets(), h.api()

	m, err := c.Download(ctx, testRepo, "main", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if h.totalGets() != gets || h.api() != api+1 {
		t.Fatalf("second run: %d file requests and %d listings, want 0 and 1", h.totalGets()-gets, h.api()-api)
	}
	if m.Commit != first.Commit || !m.CompletedAt.Equal(first.CompletedAt) {
		t.Fatalf("second run rewrote the marker: %+v", m)
	}

	if _, err := c.Download(ctx, testRepo, testCommit, dir, nil); err != nil {
		t.Fatal(err)
	}
	if h.totalGets() != gets || h.api() != api+1 {
		t.Fatalf("pinned commit: the hub was contacted")
	}

	off := newTestClient(t, h, "", func(o *Options) { o.Offline = true })
	if _, err := off.Download(ctx, testRepo, "main", dir, nil); err != nil {
		t.Fatalf("offline: %v", err)
	}
	if _, err := off.Download(ctx, testRepo, "main", dir, []string{"*.json"}); err == nil || !strings.Contains(err.Error(), "offline") {
		t.Fatalf("offline with another include: %v, want an error", err)
	}
	if h.totalGets() != gets || h.api() != api+1 {
		t.Fatalf("offline: the hub was contacted")
	}

	// A same-size corruption is invisible to the fast path; --verify finds it.
	p := filepath.Join(dir, "model-00002-of-00002.safetensors")
	bad, _ := os.ReadFile(p)
	bad[10] ^= 1
	writeFile(t, p, bad)
	ver := newTestClient(t, h, "", func(o *Options) { o.Verify = true })
	if _, err := ver.Download(ctx, testRepo, "main", dir, nil); err != nil {
		t.Fatal(err)
	}
	checkFolder(t, h, dir, defaultFiles)
	if g := h.totalGets() - gets; g != 1 {
		t.Fatalf("verify: %d file requests, want 1 (the corrupted file)", g)
	}

	// A missing file defeats the fast path and is fetched again.
	if err := os.Remove(filepath.Join(dir, "config.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Download(ctx, testRepo, "main", dir, nil); err != nil {
		t.Fatal(err)
	}
	checkFolder(t, h, dir, defaultFiles)
	if g := h.totalGets() - gets; g != 2 {
		t.Fatalf("after removing config.json: %d file requests in all, want 2", g)
	}
}

// A new commit replaces the folder's files and removes the old shards.
func TestDownloadNewCommit(t *testing.T) {
	h := newFakeHub(t)
	dir := t.TempDir()
	c := newTestClient(t, h, "", nil)
	if _, err := c.Download(context.Background(), testRepo, "main", dir, nil); err != nil {
		t.Fatal(err)
	}
	h.mu.Lock()
	h.commit = otherCommit
	delete(h.files, "model-00001-of-00002.safetensors")
	delete(h.files, "model-00002-of-00002.safetensors")
	h.files["model.safetensors"] = content(4, 2000)
	h.lfs["model.safetensors"] = true
	h.files["config.json"] = []byte(`{"model_type":"granitemoehybrid","v":2}`)
	h.mu.Unlock()
	m, err := c.Download(context.Background(), testRepo, "main", dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m.Commit != otherCommit {
		t.Fatalf("marker commit %s", m.Commit)
	}
	checkFolder(t, h, dir, []string{"config.json", "model.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"})
}

// Two downloaders into one folder: one downloads, the other waits for the
// lock, then finds the marker; every file is requested once.
func TestDownloadConcurrent(t *testing.T) {
	h := newFakeHub(t)
	dir := t.TempDir()
	shard := "model-00001-of-00002.safetensors"
	gate := make(chan struct{})
	h.gate[shard] = gate
	a, b := newTestClient(t, h, "", nil), newTestClient(t, h, "", nil)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	markers := make([]*Marker, 2)
	for i, c := range []*testClient{a, b} {
		wg.Go(func() { markers[i], errs[i] = c.Download(context.Background(), testRepo, "main", dir, nil) })
	}
	<-h.started // one holds the lock and is downloading
	waitFor(t, "the second downloader to wait for the lock", func() bool {
		return strings.Contains(a.logs.String()+b.logs.String(), "waiting for another download")
	})
	close(gate)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("downloader %d: %v", i, err)
		}
	}
	if markers[0].Commit != testCommit || !markers[0].CompletedAt.Equal(markers[1].CompletedAt) {
		t.Fatalf("markers differ: %+v %+v", markers[0], markers[1])
	}
	checkFolder(t, h, dir, defaultFiles)
	for _, n := range defaultFiles {
		if g := h.getCount(n); g != 1 {
			t.Errorf("%s requested %d times, want 1", n, g)
		}
	}
}

// Cancelling the context stops a download promptly, leaving no marker.
func TestDownloadCancel(t *testing.T) {
	h := newFakeHub(t)
	dir := t.TempDir()
	h.gate["model-00001-of-00002.safetensors"] = make(chan struct{}) // never opens
	c := newTestClient(t, h, "", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Download(ctx, testRepo, "main", dir, nil)
		done <- err
	}()
	<-h.started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Download: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Download did not return after cancel")
	}
	if _, err := os.Stat(filepath.Join(dir, MarkerName)); err == nil {
		t.Fatal("a cancelled download left a marker")
	}
}

func TestDownloadGitBlobHash(t *testing.T) {
	// `printf 'hello\n' | git hash-object --stdin`
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "f"), []byte("hello\n"))
	f := &file{MarkerFile: MarkerFile{Path: "f", Size: 6, Blob: "x"}, dest: filepath.Join(dir, "f")}
	got, err := hashFile(context.Background(), f)
	if err != nil || got != "ce013625030ba8dba906f756967f9e9ca394464a" {
		t.Fatalf("git blob hash %q, %v", got, err)
	}
}

func TestDownloadGlobs(t *testing.T) {
	cases := []struct {
		glob, path string
		want       bool
	}{
		{"*.safetensors", "model-00001-of-00002.safetensors", true},
		{"*.safetensors", "sub/model.safetensors", true}, // fnmatch: '*' crosses '/'
		{"*.safetensors", "model.safetensors.index.json", false},
		{"config.json", "config.json", true},
		{"config.json", "generation_config.json", false},
		{"tokenizer*", "tokenizer_config.json", true},
		{"model-0000?-*", "model-00002-of-00002.safetensors", true},
		{"[mc]*.json", "config.json", true},
		{"[!mc]*.json", "config.json", false},
		{"onnx/", "onnx/a/b.bin", true},
		{"a.b", "axb", false},
		{"[", "[", true},
	}
	for _, tc := range cases {
		m, err := compileGlobs([]string{tc.glob})
		if err != nil {
			t.Fatal(err)
		}
		if got := m(tc.path); got != tc.want {
			t.Errorf("%q matches %q: %v, want %v", tc.glob, tc.path, got, tc.want)
		}
	}
}

func TestDownloadOptionsFromEnv(t *testing.T) {
	tok := filepath.Join(t.TempDir(), "token")
	writeFile(t, tok, []byte("from-file\n"))
	t.Setenv("HF_ENDPOINT", "https://mirror.example/hf/")
	t.Setenv("HF_TOKEN", "from-env")
	t.Setenv("HF_TOKEN_FILE", tok)
	c, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	if c.base != "https://mirror.example/hf" || c.token != "from-file" {
		t.Fatalf("endpoint %q token %q", c.base, c.token)
	}
	t.Setenv("HF_TOKEN_FILE", "")
	if c, _ = New(Options{}); c.token != "from-env" {
		t.Fatalf("token %q, want from-env", c.token)
	}
	if c, _ = New(Options{Token: "explicit", Endpoint: "http://h:8080"}); c.token != "explicit" || c.base != "http://h:8080" {
		t.Fatalf("explicit options ignored: %q %q", c.token, c.base)
	}
	if _, err := New(Options{Endpoint: "ftp://x"}); err == nil {
		t.Fatal("ftp endpoint accepted")
	}
	if got := c.resolveURL("org/m", testCommit, "sub dir/a#b.json"); got != "http://h:8080/org/m/resolve/"+testCommit+"/sub%20dir/a%23b.json" {
		t.Fatalf("resolve URL %s", got)
	}
}
