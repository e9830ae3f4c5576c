package hub

import (
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// File names Download keeps in the folder.
const (
	// MarkerName is written once every selected file is present and
	// verified; while it exists the folder is complete. Download removes it
	// before it changes any file.
	MarkerName = ".switchyard-download.json"
	// stateName holds the files verified so far by an unfinished download,
	// so that a restart does not hash them again.
	stateName = ".switchyard-download.partial.json"
	// lockName is flocked by the one process downloading into the folder.
	lockName = ".switchyard-download.lock"
	// MarkerVersion is the version field of the marker this package writes.
	MarkerVersion = 1
)

// Marker is the JSON content of MarkerName.
type Marker struct {
	Version int `json:"version"`
	// Repo is the Hugging Face repo id, e.g. ibm-granite/granite-4.0-h-tiny.
	Repo string `json:"repo"`
	// Revision is the branch, tag or commit that was asked for.
	Revision string `json:"revision"`
	// Commit is the 40-hex commit the revision resolved to.
	Commit string `json:"commit"`
	// Include is the effective list of globs that selected the files.
	Include []string `json:"include"`
	// Files are the verified files, sorted by path.
	Files []MarkerFile `json:"files"`
	// CompletedAt is when the last file was verified (UTC); absent in the
	// in-progress state file.
	CompletedAt time.Time `json:"completed_at,omitzero"`
}

// MarkerFile is one verified file. Exactly one of SHA256 (LFS files: the
// SHA-256 of the content) and Blob (other files: the git blob id,
// sha1("blob <size>\x00" + content)) is set.
type MarkerFile struct {
	// Path is relative to the folder, with forward slashes.
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256,omitempty"`
	Blob   string `json:"blob,omitempty"`
}

// HashMismatchError reports a downloaded file whose content is not what the
// Hub lists; the file was removed.
type HashMismatchError struct {
	Path      string
	Algorithm string // "sha256" or "git-blob-sha1"
	Want, Got string
}

func (e *HashMismatchError) Error() string {
	return fmt.Sprintf("file %s failed verification: %s expected %s, got %s (the bad file was removed)", e.Path, e.Algorithm, e.Want, e.Got)
}

// file is one file to fetch: what it must be, and where it goes.
type file struct {
	MarkerFile
	dest string
}

func (f *file) algorithm() string {
	if f.SHA256 != "" {
		return "sha256"
	}
	return "git-blob-sha1"
}

func (f *file) want() string {
	if f.SHA256 != "" {
		return f.SHA256
	}
	return f.Blob
}

func (f *file) newHash() hash.Hash {
	if f.SHA256 != "" {
		return sha256.New()
	}
	h := sha1.New()
	fmt.Fprintf(h, "blob %d\x00", f.Size)
	return h
}

// Download makes dir a verified copy of the files of repo at revision
// (default "main") that match include (default DefaultInclude; see
// compileGlobs for the syntax), and returns the marker it wrote. It returns
// nil error only when every file is present and verified against the Hub's
// size and hash and the marker is on disk.
//
// Processes sharing dir take turns through a lock file: the others wait, then
// find the marker and return. A folder whose marker already names the
// revision's commit and whose files have the listed sizes is not touched
// (no hashing, no file download); when revision is itself that commit, the
// Hub is not contacted at all.
func (c *Client) Download(ctx context.Context, repo, revision, dir string, include []string) (*Marker, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if dir == "" {
		return nil, errors.New("no destination folder")
	}
	if revision == "" {
		revision = "main"
	}
	defaulted := len(include) == 0
	if defaulted {
		include = DefaultInclude
	}
	match, err := compileGlobs(include)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dir, err)
	}
	release, err := c.lock(ctx, dir)
	switch {
	case err != nil && c.opts.Offline && ctx.Err() == nil:
		// Offline only reads: a read-only mount of the folder will do.
		c.log.Debug("hub: offline check without the lock", "err", err)
	case err != nil:
		return nil, err
	default:
		defer release()
	}

	old := c.readMarker(filepath.Join(dir, MarkerName))
	log := c.log.With("repo", repo, "revision", revision, "dir", dir)
	if c.opts.Offline {
		if old == nil || old.Repo != repo || (old.Revision != revision && old.Commit != revision) || !slices.Equal(old.Include, include) {
			return nil, fmt.Errorf("offline: %s holds no complete download of %s@%s with include %v", dir, repo, revision, include)
		}
		if err := c.check(ctx, dir, old.Files, c.opts.Verify); err != nil {
			return nil, fmt.Errorf("offline: %w", err)
		}
		log.Info("hub: offline; the folder is complete", "commit", old.Commit)
		return old, nil
	}
	if old != nil && !c.opts.Verify && old.Repo == repo && old.Commit == revision && slices.Equal(old.Include, include) {
		if err := c.check(ctx, dir, old.Files, false); err == nil {
			log.Info("hub: already complete", "commit", old.Commit, "files", len(old.Files))
			return old, nil
		}
	}

	info, err := c.RepoInfo(ctx, repo, revision)
	if err != nil {
		return nil, err
	}
	files, err := selectFiles(info, match, dir)
	if err != nil {
		return nil, fmt.Errorf("%s@%s: %w", repo, revision, err)
	}
	if err := checkSelection(info, files, include, defaulted); err != nil {
		return nil, fmt.Errorf("%s@%s: %w", repo, revision, err)
	}
	want := make([]MarkerFile, len(files))
	for i := range files {
		want[i] = files[i].MarkerFile
	}
	if old != nil && !c.opts.Verify && old.Repo == repo && old.Commit == info.SHA && covers(old.Files, want) {
		err := c.check(ctx, dir, want, false)
		if err == nil {
			log.Info("hub: already complete", "commit", old.Commit, "files", len(old.Files))
			return old, nil
		}
		log.Info("hub: the marker's files changed; checking them again", "problem", err)
	}

	// Files verified earlier (by the complete marker or an unfinished run)
	// need no hashing while they keep their size.
	verified := map[string]MarkerFile{}
	if !c.opts.Verify {
		for _, m := range []*Marker{old, c.readMarker(filepath.Join(dir, stateName))} {
			if m != nil {
				for _, f := range m.Files {
					verified[f.Path] = f
				}
			}
		}
	}
	if old != nil {
		// From here on the folder is not the one the marker describes.
		if err := os.Remove(filepath.Join(dir, MarkerName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("remove the old marker: %w", err)
		}
		if err := syncDir(dir); err != nil {
			return nil, err
		}
		if old.Repo != repo || old.Commit != info.SHA {
			c.removeStale(dir, old, want)
		}
	}

	st := &state{
		path: filepath.Join(dir, stateName),
		m:    Marker{Version: MarkerVersion, Repo: repo, Revision: revision, Commit: info.SHA, Include: include},
	}
	log.Info("hub: downloading", "commit", info.SHA, "files", len(files), "bytes", humanBytes(totalSize(want)))
	if err := c.fetchAll(ctx, repo, info.SHA, files, verified, st); err != nil {
		return nil, err
	}

	m := st.m
	slices.SortFunc(m.Files, func(a, b MarkerFile) int { return strings.Compare(a.Path, b.Path) })
	m.CompletedAt = time.Now().UTC().Truncate(time.Second)
	if err := writeJSON(filepath.Join(dir, MarkerName), &m); err != nil {
		return nil, fmt.Errorf("write the marker: %w", err)
	}
	if err := os.Remove(st.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("hub: remove the state file", "err", err)
	}
	log.Info("hub: complete", "commit", info.SHA, "files", len(m.Files), "bytes", humanBytes(totalSize(m.Files)))
	return &m, nil
}

// selectFiles picks the siblings that match and checks that each can be
// verified and stays inside dir.
func selectFiles(info *RepoInfo, match func(string) bool, dir string) ([]file, error) {
	var files []file
	for _, s := range info.Siblings {
		p := s.RFilename
		if !match(p) {
			continue
		}
		if !filepath.IsLocal(filepath.FromSlash(p)) || strings.Contains(p, `\`) || strings.HasPrefix(filepath.Base(p), ".switchyard-download") {
			return nil, fmt.Errorf("the hub lists a file with an unsafe path %q", p)
		}
		mf := MarkerFile{Path: p}
		switch {
		case s.LFS != nil:
			if !isHex(s.LFS.SHA256, 64) || s.LFS.Size < 0 {
				return nil, fmt.Errorf("the hub lists %s with a bad LFS sha256 %q or size", p, s.LFS.SHA256)
			}
			mf.Size, mf.SHA256 = s.LFS.Size, strings.ToLower(s.LFS.SHA256)
		case s.BlobID != "" && s.Size != nil:
			if !isHex(s.BlobID, 40) || *s.Size < 0 {
				return nil, fmt.Errorf("the hub lists %s with a bad blob id %q or size", p, s.BlobID)
			}
			mf.Size, mf.Blob = *s.Size, strings.ToLower(s.BlobID)
		default:
			return nil, fmt.Errorf("the hub lists %s without a size and hash, so it cannot be verified", p)
		}
		files = append(files, file{MarkerFile: mf, dest: filepath.Join(dir, filepath.FromSlash(p))})
	}
	return files, nil
}

// checkSelection rejects a selection that cannot be what was meant.
func checkSelection(info *RepoInfo, files []file, include []string, defaulted bool) error {
	names := make([]string, 0, len(info.Siblings))
	for _, s := range info.Siblings {
		names = append(names, s.RFilename)
	}
	if len(names) > 30 {
		names = append(names[:30], "...")
	}
	if len(files) == 0 {
		return fmt.Errorf("no file matches the include globs %q; the repo has: %s", include, strings.Join(names, ", "))
	}
	if defaulted && !slices.ContainsFunc(files, func(f file) bool { return strings.HasSuffix(f.Path, ".safetensors") }) {
		return fmt.Errorf("the default include globs found no *.safetensors (the repo has: %s); pass --include, e.g. '*.gguf'", strings.Join(names, ", "))
	}
	return nil
}

func isHex(s string, n int) bool { return len(s) == n && hexRE.MatchString(strings.ToLower(s)) }

// covers reports whether have lists every file of want with the same size and hash.
func covers(have, want []MarkerFile) bool {
	idx := make(map[string]MarkerFile, len(have))
	for _, f := range have {
		idx[f.Path] = f
	}
	for _, f := range want {
		if idx[f.Path] != f {
			return false
		}
	}
	return true
}

func totalSize(files []MarkerFile) int64 {
	var n int64
	for _, f := range files {
		n += f.Size
	}
	return n
}

// check verifies that every file is in dir with its size, and with hash also
// its content.
func (c *Client) check(ctx context.Context, dir string, files []MarkerFile, hash bool) error {
	for _, mf := range files {
		f := file{MarkerFile: mf, dest: filepath.Join(dir, filepath.FromSlash(mf.Path))}
		st, err := os.Stat(f.dest)
		if err != nil {
			return fmt.Errorf("%s: %w", mf.Path, err)
		}
		if !st.Mode().IsRegular() || st.Size() != mf.Size {
			return fmt.Errorf("%s: %d bytes, want %d", mf.Path, st.Size(), mf.Size)
		}
		if hash {
			got, err := hashFile(ctx, &f)
			if err != nil {
				return err
			}
			if got != f.want() {
				return fmt.Errorf("%s: %s expected %s, got %s", f.Path, f.algorithm(), f.want(), got)
			}
		}
	}
	return nil
}

// removeStale deletes the files of the previous download that the new one
// does not have (the shards of an older commit).
func (c *Client) removeStale(dir string, old *Marker, want []MarkerFile) {
	keep := make(map[string]bool, len(want))
	for _, f := range want {
		keep[f.Path] = true
	}
	for _, f := range old.Files {
		if keep[f.Path] || !filepath.IsLocal(filepath.FromSlash(f.Path)) {
			continue
		}
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.Remove(p); err == nil {
			c.log.Info("hub: removed a file of the previous download", "file", f.Path, "commit", old.Commit)
		} else if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("hub: remove a file of the previous download", "file", f.Path, "err", err)
		}
	}
}

// state is the in-progress marker, rewritten after each verified file.
type state struct {
	path string
	mu   sync.Mutex
	m    Marker
}

func (s *state) add(log *slog.Logger, f MarkerFile) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m.Files = append(s.m.Files, f)
	if err := writeJSON(s.path, &s.m); err != nil {
		// Only costs hashing the file again after a restart.
		log.Warn("hub: write the state file", "err", err)
	}
}

// fetchAll makes every file present and verified, Parallel at a time; the
// first error cancels the rest.
func (c *Client) fetchAll(ctx context.Context, repo, commit string, files []file, verified map[string]MarkerFile, st *state) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	prog := newProgress(c.log)
	go prog.run(ctx, c.opts.ProgressInterval)

	// Largest first, so the big shards overlap.
	order := slices.Clone(files)
	slices.SortStableFunc(order, func(a, b file) int { return int(min(max(b.Size-a.Size, -1), 1)) })
	jobs := make(chan *file)
	var (
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range min(c.opts.Parallel, len(order)) {
		wg.Go(func() {
			for f := range jobs {
				if ctx.Err() != nil {
					continue
				}
				if err := c.fetch(ctx, repo, commit, f, verified, prog); err != nil {
					errOnce.Do(func() { firstErr = err; cancel(err) })
					continue
				}
				st.add(c.log, f.MarkerFile)
			}
		})
	}
feed:
	for i := range order {
		select {
		case jobs <- &order[i]:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// fetch makes one file present and verified: kept when it already is,
// downloaded otherwise.
func (c *Client) fetch(ctx context.Context, repo, commit string, f *file, verified map[string]MarkerFile, prog *progress) error {
	st, err := os.Lstat(f.dest)
	switch {
	case err == nil && st.IsDir():
		return fmt.Errorf("%s is in the way: a folder where the file %s goes", f.dest, f.Path)
	case err == nil && st.Mode().IsRegular() && st.Size() == f.Size:
		if v, ok := verified[f.Path]; ok && v == f.MarkerFile {
			c.log.Debug("hub: present, verified earlier", "file", f.Path)
			return nil
		}
		got, err := hashFile(ctx, f)
		if err != nil {
			return err
		}
		if got == f.want() {
			c.log.Info("hub: present and verified", "file", f.Path)
			return nil
		}
		c.log.Warn("hub: present but its hash differs; downloading it again", "file", f.Path, "algorithm", f.algorithm(), "expected", f.want(), "got", got)
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("stat %s: %w", f.dest, err)
	}
	return c.downloadFile(ctx, repo, commit, f, prog)
}

// hashFile returns the hex digest of f.dest under f's algorithm.
func hashFile(ctx context.Context, f *file) (string, error) {
	fh, err := os.Open(f.dest)
	if err != nil {
		return "", fmt.Errorf("verify %s: %w", f.Path, err)
	}
	defer fh.Close()
	h := f.newHash()
	n, err := io.Copy(h, ctxReader{ctx, fh})
	if err != nil {
		return "", fmt.Errorf("verify %s: %w", f.Path, err)
	}
	if n != f.Size {
		return "", fmt.Errorf("verify %s: read %d bytes, want %d", f.Path, n, f.Size)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// downloadFile fetches f into f.dest+".part" (resuming what is there),
// verifies it and renames it into place.
func (c *Client) downloadFile(ctx context.Context, repo, commit string, f *file, prog *progress) error {
	if err := os.MkdirAll(filepath.Dir(f.dest), 0o755); err != nil {
		return fmt.Errorf("create the folder of %s: %w", f.Path, err)
	}
	part := f.dest + ".part"
	fp := prog.start(f)
	defer prog.finish(fp)
	for again := false; ; again = true {
		resumed, got, err := c.fetchPart(ctx, repo, commit, f, part, fp)
		if err != nil {
			return err
		}
		if got == f.want() {
			break
		}
		if err := os.Remove(part); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", part, err)
		}
		if resumed && !again {
			// The partial file may be left from another version of the file.
			c.log.Warn("hub: a resumed file did not verify; downloading it again from the start", "file", f.Path)
			continue
		}
		if err := os.Remove(f.dest); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", f.dest, err)
		}
		return &HashMismatchError{Path: f.Path, Algorithm: f.algorithm(), Want: f.want(), Got: got}
	}
	if err := os.Rename(part, f.dest); err != nil {
		return fmt.Errorf("move %s into place: %w", f.Path, err)
	}
	if err := syncDir(filepath.Dir(f.dest)); err != nil {
		return err
	}
	took := time.Since(fp.began)
	c.log.Info("hub: downloaded", "file", f.Path, "bytes", humanBytes(f.Size), "took", took.Round(time.Millisecond),
		"rate", humanBytes(rate(fp.got.Load()-fp.from.Load(), took))+"/s")
	return nil
}

// fetchPart brings part up to f.Size bytes, resuming from its current
// length with a Range request when the server allows it, and returns the
// digest of the whole and whether bytes from an earlier run were reused.
func (c *Client) fetchPart(ctx context.Context, repo, commit string, f *file, part string, fp *fileProg) (resumed bool, sum string, err error) {
	fh, err := os.OpenFile(part, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return false, "", fmt.Errorf("open %s: %w", part, err)
	}
	defer func() {
		if fh != nil {
			fh.Close()
		}
	}()
	h := f.newHash()
	off, err := primeHash(ctx, fh, h, f.Size)
	if err != nil {
		return false, "", fmt.Errorf("read %s: %w", part, err)
	}
	resumed = off > 0
	if resumed {
		c.log.Info("hub: resuming", "file", f.Path, "from", humanBytes(off), "of", humanBytes(f.Size))
	}
	fp.got.Store(off)
	fp.from.Store(off)
	restart := func() error {
		if err := fh.Truncate(0); err != nil {
			return fmt.Errorf("truncate %s: %w", part, err)
		}
		h, off, resumed = f.newHash(), 0, false
		fp.got.Store(0)
		fp.from.Store(0)
		return nil
	}
	u := c.resolveURL(repo, commit, f.Path)
	err = c.retry(ctx, "download "+f.Path, func(ctx context.Context) (bool, error) {
		if off == f.Size {
			return false, nil
		}
		actx, cancel := context.WithCancelCause(ctx)
		defer cancel(nil)
		stall := time.AfterFunc(c.opts.StallTimeout, func() { cancel(errStalled) })
		defer stall.Stop()
		classify := func(err error) error {
			if ctx.Err() == nil && errors.Is(context.Cause(actx), errStalled) {
				return transient(fmt.Errorf("%s: %w", f.Path, errStalled), 0)
			}
			return netError(ctx, err)
		}
		var hdr http.Header
		if off > 0 {
			hdr = http.Header{"Range": {"bytes=" + strconv.FormatInt(off, 10) + "-"}}
		}
		resp, err := c.get(actx, u, hdr)
		if err != nil {
			return false, classify(err)
		}
		defer resp.Body.Close()
		switch code := resp.StatusCode; {
		case code == http.StatusPartialContent && off > 0:
			if cr := resp.Header.Get("Content-Range"); !rangeStartsAt(cr, off) {
				if err := restart(); err != nil {
					return false, err
				}
				return false, transient(fmt.Errorf("%s: asked for bytes from %d, the server sent %q", f.Path, off, cr), 0)
			}
		case code == http.StatusOK:
			if off > 0 {
				c.log.Info("hub: the server does not resume; downloading from the start", "file", f.Path)
				if err := restart(); err != nil {
					return false, err
				}
			}
		case code == http.StatusRequestedRangeNotSatisfiable && off > 0:
			if err := restart(); err != nil {
				return false, err
			}
			return false, transient(fmt.Errorf("%s: the server cannot resume from byte %d", f.Path, off), 0)
		default:
			return false, c.statusError(resp, repo, commit, f.Path)
		}
		n, err := copyBody(fh, h, resp.Body, off, f, fp, func() { stall.Reset(c.opts.StallTimeout) }, classify)
		off += n
		return n > 0, err
	})
	if err != nil {
		return resumed, "", err
	}
	if err := fh.Sync(); err != nil {
		return resumed, "", fmt.Errorf("sync %s: %w", part, err)
	}
	err = fh.Close()
	fh = nil
	if err != nil {
		return resumed, "", fmt.Errorf("close %s: %w", part, err)
	}
	return resumed, hex.EncodeToString(h.Sum(nil)), nil
}

// primeHash feeds the bytes already in fh to h and returns their count; a
// file longer than size is emptied.
func primeHash(ctx context.Context, fh *os.File, h hash.Hash, size int64) (int64, error) {
	st, err := fh.Stat()
	if err != nil {
		return 0, err
	}
	n := st.Size()
	if n > size {
		return 0, fh.Truncate(0)
	}
	if n == 0 {
		return 0, nil
	}
	got, err := io.Copy(h, ctxReader{ctx, io.NewSectionReader(fh, 0, n)})
	if err != nil {
		return 0, err
	}
	if got != n {
		return 0, fmt.Errorf("read %d of %d bytes", got, n)
	}
	return n, nil
}

// rangeStartsAt reports whether a Content-Range header ("bytes 100-199/200")
// starts at off.
func rangeStartsAt(cr string, off int64) bool {
	rest, ok := strings.CutPrefix(cr, "bytes ")
	if !ok {
		return false
	}
	start, _, ok := strings.Cut(rest, "-")
	if !ok {
		return false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(start), 10, 64)
	return err == nil && n == off
}

// copyBody writes body to fh from off and into h, and returns the bytes
// written. A body that ends early or breaks is a transient error (what
// arrived is kept for the next try); one longer than the file, or a failing
// write, is not.
func copyBody(fh *os.File, h hash.Hash, body io.Reader, off int64, f *file, fp *fileProg, alive func(), classify func(error) error) (int64, error) {
	buf := make([]byte, 256<<10)
	remaining := f.Size - off
	var n int64
	for {
		m, rerr := body.Read(buf)
		if m > 0 {
			alive()
			if n+int64(m) > remaining {
				return n, fmt.Errorf("%s: the server sent more than the %d bytes the hub lists", f.Path, f.Size)
			}
			w, werr := fh.WriteAt(buf[:m], off+n)
			h.Write(buf[:w])
			n += int64(w)
			fp.got.Add(int64(w))
			if werr != nil {
				return n, fmt.Errorf("write %s: %w", fh.Name(), werr)
			}
		}
		if rerr == io.EOF {
			if n < remaining {
				return n, transient(fmt.Errorf("%s: the download ended after %d of %d bytes: %w", f.Path, off+n, f.Size, io.ErrUnexpectedEOF), 0)
			}
			return n, nil
		}
		if rerr != nil {
			return n, classify(rerr)
		}
	}
}

// ctxReader stops reading once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, context.Cause(r.ctx)
	}
	return r.r.Read(p)
}

// lock takes the folder's lock file, waiting (and polling, so ctx can end
// the wait) while another process holds it.
func (c *Client) lock(ctx context.Context, dir string) (release func(), err error) {
	p := filepath.Join(dir, lockName)
	fh, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open the lock file: %w", err)
	}
	wait, logged := 20*time.Millisecond, false
	for {
		ok, err := tryLock(fh)
		if err != nil {
			fh.Close()
			return nil, fmt.Errorf("lock %s (the volume must support flock): %w", p, err)
		}
		if ok {
			break
		}
		if !logged {
			b, _ := io.ReadAll(io.LimitReader(fh, 200))
			c.log.Info("hub: waiting for another download into this folder", "dir", dir, "holder", strings.TrimSpace(string(b)))
			logged = true
		}
		if err := sleepCtx(ctx, wait); err != nil {
			fh.Close()
			return nil, fmt.Errorf("wait for the lock on %s: %w", dir, err)
		}
		wait = min(wait*2, 2*time.Second)
	}
	host, _ := os.Hostname()
	if err := fh.Truncate(0); err == nil {
		_, _ = fh.WriteAt(fmt.Appendf(nil, "pid %d on %s since %s\n", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339)), 0)
	}
	return func() {
		_ = unlock(fh)
		fh.Close()
	}, nil
}

// readMarker reads a marker file; a missing or unreadable one is nil.
func (c *Client) readMarker(path string) *Marker {
	b, err := os.ReadFile(path)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			c.log.Warn("hub: read marker", "path", path, "err", err)
		}
		return nil
	}
	var m Marker
	if err := json.Unmarshal(b, &m); err != nil || m.Version != MarkerVersion {
		c.log.Warn("hub: ignoring an unreadable marker", "path", path, "err", err, "version", m.Version)
		return nil
	}
	return &m
}

// writeJSON writes v to path atomically: temp file, fsync, rename, fsync dir.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, errors.ErrUnsupported) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
