// Package hub is a small Hugging Face Hub client built into the switchyard
// binary: it lists a model repo's files at a revision (with sizes and hashes)
// and downloads a verified copy of a selection of them into a folder
// (Client.Download), resuming partial files, retrying transient errors, and
// letting several processes share one cache volume through a lock file. It is
// what `switchyard download` runs, so a cluster fetches a checkpoint without
// Python or any package install.
package hub

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// DefaultEndpoint is the public Hub, used unless Options.Endpoint or
// $HF_ENDPOINT names another (a mirror).
const DefaultEndpoint = "https://huggingface.co"

const userAgent = "switchyard-hub/1"

// tokenHint tells a person where a token goes.
const tokenHint = "set HF_TOKEN (or HF_TOKEN_FILE), or the chart's model.download.token.existingSecret"

// Options configures a Client. The zero value talks anonymously (or with
// $HF_TOKEN) to the public Hub.
type Options struct {
	// Endpoint is the Hub's base URL; default $HF_ENDPOINT, else DefaultEndpoint.
	Endpoint string
	// Token is a Hub access token sent as "Authorization: Bearer" to the
	// endpoint (never to another host a download redirects to). Default: the
	// contents of the file named by $HF_TOKEN_FILE when that is set, else $HF_TOKEN.
	Token string
	// HTTPClient sends the requests (default: one with header timeouts and no
	// overall timeout, since checkpoints are large). Its CheckRedirect is not
	// used: the client follows redirects itself to keep the token on the endpoint.
	HTTPClient *http.Client
	// Logger receives progress and retries (default: discard).
	Logger *slog.Logger

	// Verify re-hashes every file even when a complete marker says the folder
	// is already done.
	Verify bool
	// Offline never contacts the Hub: Download succeeds only when a complete
	// marker for the repo, revision and include list is in the folder.
	Offline bool
	// Parallel is how many files download at once (default 4).
	Parallel int
	// ProgressInterval is the least time between two progress lines (default 5s).
	ProgressInterval time.Duration
	// MaxAttempts bounds the tries of one request in a row that make no
	// progress (default 8); a try that received bytes resets the count.
	MaxAttempts int
	// RetryBase and RetryMax bound the exponential backoff between tries
	// (defaults 1s and 30s). A Retry-After header is honoured up to 5 minutes.
	RetryBase, RetryMax time.Duration
	// StallTimeout aborts (and retries) a request that receives nothing for
	// that long (default 2m).
	StallTimeout time.Duration
}

// Client talks to one Hub endpoint. It is safe for concurrent use.
type Client struct {
	base     string   // endpoint without a trailing slash
	endpoint *url.URL // parsed base, for the same-origin check
	token    string
	hc       *http.Client
	log      *slog.Logger
	opts     Options
	// sleep waits d or until ctx ends; tests replace it to observe backoff.
	sleep func(ctx context.Context, d time.Duration) error
}

// New returns a Client for opts, filling in the defaults.
func New(opts Options) (*Client, error) {
	ep := opts.Endpoint
	if ep == "" {
		ep = os.Getenv("HF_ENDPOINT")
	}
	if ep == "" {
		ep = DefaultEndpoint
	}
	ep = strings.TrimRight(ep, "/")
	u, err := url.Parse(ep)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("hub endpoint %q: want an http or https URL", ep)
	}
	tok := opts.Token
	if tok == "" {
		if f := os.Getenv("HF_TOKEN_FILE"); f != "" {
			b, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read the token file named by HF_TOKEN_FILE: %w", err)
			}
			tok = strings.TrimSpace(string(b))
		} else {
			tok = strings.TrimSpace(os.Getenv("HF_TOKEN"))
		}
	}
	var hc http.Client
	if opts.HTTPClient != nil {
		hc = *opts.HTTPClient
	} else {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = 2 * time.Minute
		hc.Transport = tr
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.Parallel <= 0 {
		opts.Parallel = 4
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = 5 * time.Second
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 8
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = time.Second
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 30 * time.Second
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = 2 * time.Minute
	}
	return &Client{base: ep, endpoint: u, token: tok, hc: &hc, log: log, opts: opts, sleep: sleepCtx}, nil
}

// RepoInfo is a repo revision as the Hub lists it.
type RepoInfo struct {
	// SHA is the commit the revision resolved to.
	SHA      string    `json:"sha"`
	Siblings []Sibling `json:"siblings"`
}

// Sibling is one file of a repo revision
// (GET /api/models/{repo}/revision/{rev}?blobs=true).
type Sibling struct {
	// RFilename is the path inside the repo, with forward slashes.
	RFilename string `json:"rfilename"`
	// Size is the file's size in bytes.
	Size *int64 `json:"size"`
	// BlobID is the git object id of the file, sha1("blob <n>\x00" + content);
	// for an LFS file it is the id of the pointer, not of the content.
	BlobID string `json:"blobId"`
	// LFS is set for files stored in LFS (or Xet): their content's SHA-256.
	LFS *LFSInfo `json:"lfs"`
}

// LFSInfo is the large-file metadata of a Sibling.
type LFSInfo struct {
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
	PointerSize int64  `json:"pointerSize"`
}

var (
	repoRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$`)
	hexRE  = regexp.MustCompile(`^[0-9a-f]+$`)
)

func checkRepo(repo string) error {
	if !repoRE.MatchString(repo) || strings.Contains(repo, "..") {
		return fmt.Errorf("repo %q: want a Hugging Face repo id such as ibm-granite/granite-4.0-h-tiny", repo)
	}
	return nil
}

// RepoInfo lists the files of repo at revision (a branch, tag or commit),
// with their sizes and hashes.
func (c *Client) RepoInfo(ctx context.Context, repo, revision string) (*RepoInfo, error) {
	if err := checkRepo(repo); err != nil {
		return nil, err
	}
	if revision == "" {
		revision = "main"
	}
	u := c.base + "/api/models/" + repo + "/revision/" + url.PathEscape(revision) + "?blobs=true"
	var info RepoInfo
	err := c.retry(ctx, "list "+repo+"@"+revision, func(ctx context.Context) (bool, error) {
		resp, err := c.get(ctx, u, nil)
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return false, c.statusError(resp, repo, revision, "")
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return false, transient(fmt.Errorf("read the file list: %w", err), 0)
		}
		info = RepoInfo{}
		if err := json.Unmarshal(body, &info); err != nil {
			return false, fmt.Errorf("the hub's file list of %s@%s is not the expected JSON: %w", repo, revision, err)
		}
		return true, nil
	})
	if err != nil {
		return nil, err
	}
	if !hexRE.MatchString(info.SHA) || len(info.SHA) < 40 {
		return nil, fmt.Errorf("the hub's answer for %s@%s has no commit sha (got %q)", repo, revision, info.SHA)
	}
	return &info, nil
}

// resolveURL is where a file of repo at commit is downloaded from.
func (c *Client) resolveURL(repo, commit, file string) string {
	segs := strings.Split(file, "/")
	for i, s := range segs {
		segs[i] = url.PathEscape(s)
	}
	return c.base + "/" + repo + "/resolve/" + url.PathEscape(commit) + "/" + strings.Join(segs, "/")
}

// get sends a GET for rawURL with hdr and follows up to 10 redirects itself,
// so that the token only ever goes to the endpoint's own scheme, host and
// port (the Hub redirects LFS files to a CDN, which must not see it).
func (c *Client) get(ctx context.Context, rawURL string, hdr http.Header) (*http.Response, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("bad URL %q: %w", rawURL, err)
	}
	for hops := 0; ; hops++ {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return nil, fmt.Errorf("request %s: %w", u.Redacted(), err)
		}
		for k, v := range hdr {
			req.Header[k] = v
		}
		req.Header.Set("User-Agent", userAgent)
		// Bytes on disk are the bytes the server stores, so ranges and
		// sizes line up.
		req.Header.Set("Accept-Encoding", "identity")
		if c.token != "" && sameOrigin(u, c.endpoint) {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := c.hc.Do(req)
		if err != nil {
			return nil, netError(ctx, err)
		}
		switch resp.StatusCode {
		case http.StatusMovedPermanently, http.StatusFound, http.StatusSeeOther,
			http.StatusTemporaryRedirect, http.StatusPermanentRedirect:
		default:
			return resp, nil
		}
		loc := resp.Header.Get("Location")
		drain(resp)
		if loc == "" {
			return nil, fmt.Errorf("%s: redirect %d without a Location", u.Redacted(), resp.StatusCode)
		}
		if hops >= 10 {
			return nil, fmt.Errorf("%s: more than 10 redirects", rawURL)
		}
		next, err := u.Parse(loc)
		if err != nil {
			return nil, fmt.Errorf("%s: bad redirect Location %q: %w", u.Redacted(), loc, err)
		}
		u = next
	}
}

// sameOrigin reports whether a and b have the same scheme, host and port.
func sameOrigin(a, b *url.URL) bool {
	return strings.EqualFold(a.Scheme, b.Scheme) && strings.EqualFold(hostPort(a), hostPort(b))
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if strings.EqualFold(u.Scheme, "https") {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// StatusError is an HTTP answer the client does not accept.
type StatusError struct {
	Code int
	// Message is the Hub's X-Error-Message, or the start of the body.
	Message string
}

func (e *StatusError) Error() string {
	s := fmt.Sprintf("the hub answered %d %s", e.Code, http.StatusText(e.Code))
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// statusError turns a non-success answer into an error a person can act on
// (file is "" for the file listing). 429 and 5xx come back transient.
func (c *Client) statusError(resp *http.Response, repo, revision, file string) error {
	msg := resp.Header.Get("X-Error-Message")
	if msg == "" {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		msg = strings.Join(strings.Fields(string(b)), " ")
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
	}
	se := &StatusError{Code: resp.StatusCode, Message: msg}
	switch code := resp.StatusCode; {
	case code == http.StatusUnauthorized || code == http.StatusForbidden:
		if c.token == "" {
			return fmt.Errorf("repo %s needs a token (%s), or it does not exist: %w", repo, tokenHint, se)
		}
		return fmt.Errorf("repo %s: the token was refused or has no access to it (check the token; for a gated repo accept its terms on the hub with the token's account; %s): %w", repo, tokenHint, se)
	case code == http.StatusNotFound && file == "":
		return fmt.Errorf("repo or revision not found: %s@%s (check --repo and --revision): %w", repo, revision, se)
	case code == http.StatusNotFound:
		return fmt.Errorf("file %s not found in %s@%s: %w", file, repo, revision, se)
	case code == http.StatusTooManyRequests || code >= 500:
		return transient(se, retryAfter(resp.Header.Get("Retry-After")))
	}
	if file != "" {
		return fmt.Errorf("download %s from %s: %w", file, repo, se)
	}
	return fmt.Errorf("list %s@%s: %w", repo, revision, se)
}

// retryAfter parses a Retry-After header (seconds or an HTTP date).
func retryAfter(v string) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil && s >= 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(time.Until(t), 0)
	}
	return 0
}

// transientError is an error worth retrying, after at least after.
type transientError struct {
	err   error
	after time.Duration
}

func (e *transientError) Error() string { return e.err.Error() }
func (e *transientError) Unwrap() error { return e.err }

func transient(err error, after time.Duration) error { return &transientError{err, after} }

// netError classifies a transport error: network failures are transient,
// the caller's cancellation is not.
func netError(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if errors.Is(err, errStalled) {
		return transient(err, 0)
	}
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) {
		return err // a bad certificate does not heal by retrying
	}
	var ne net.Error
	if errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) {
		return transient(err, 0)
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		// Other transport failures (a TLS handshake cut short, a proxy that
		// hung up) are usually transient too.
		return transient(err, 0)
	}
	return err
}

var errStalled = errors.New("no data received within the stall timeout")

// maxRetryAfter caps how long a Retry-After header can make us wait.
const maxRetryAfter = 5 * time.Minute

// retry runs try until it succeeds, fails with a non-transient error, or
// fails MaxAttempts times in a row without progress; it backs off
// exponentially (with jitter) between tries, honouring Retry-After.
func (c *Client) retry(ctx context.Context, what string, try func(ctx context.Context) (progressed bool, err error)) error {
	fails := 0
	for {
		progressed, err := try(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s: %w", what, context.Cause(ctx))
		}
		var te *transientError
		if !errors.As(err, &te) {
			return err
		}
		if progressed {
			fails = 0
		}
		fails++
		if fails >= c.opts.MaxAttempts {
			return fmt.Errorf("%s: giving up after %d tries: %w", what, fails, err)
		}
		d := min(c.opts.RetryBase<<(fails-1), c.opts.RetryMax)
		if d <= 0 { // shift overflow
			d = c.opts.RetryMax
		}
		d = d/2 + rand.N(d/2+1) // jitter: [d/2, d]
		if te.after > d {
			d = min(te.after, maxRetryAfter)
		}
		c.log.Warn("hub: retrying", "what", what, "try", fails, "after", d.Round(time.Millisecond), "err", err)
		if err := c.sleep(ctx, d); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
