package trunknode

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"
)

// fuzzPaths are the OpenAI API's POST endpoints FuzzOpenAIRequest sends to.
var fuzzPaths = []string{"/v1/chat/completions", "/v1/completions", "/v1/responses"}

// FuzzOpenAIRequest posts arbitrary bodies to the OpenAI-compatible API of
// one node: every answer is a success or a client error (4xx) with an
// OpenAI error object, or 503/504; never a 500 (what the server's recover
// writes for a handler that panicked), never a dropped connection. Token
// counts in the body are capped at 4 (the node's own limit is 8) so that a
// run stays fast; any other field goes through as the fuzzer wrote it.
func FuzzOpenAIRequest(f *testing.F) {
	for _, s := range []struct {
		path uint8
		body string
	}{
		{0, `{"model":"hf","messages":[{"role":"user","content":"hi"}],"max_tokens":3}`},
		{0, `{"model":"hf","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"stream":true,"stream_options":{"include_usage":true},"max_completion_tokens":2,"logprobs":true,"top_logprobs":2}`},
		{0, `{"model":"hf","messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}},"max_tokens":4}`},
		{0, `{"model":"hf","messages":[{"role":"user","content":"hi"}],"temperature":0.7,"top_p":0.9,"seed":3,"stop":["a","b"],"max_tokens":2}`},
		{0, `{"model":"hf","messages":[{"role":"assistant","tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}]}`},
		{1, `{"model":"hf","prompt":"hello","max_tokens":2,"echo":true}`},
		{1, `{"model":"hf","prompt":["a","b"],"max_tokens":2,"stream":true}`},
		{1, `{"model":"hf","prompt":[1,2,3],"max_tokens":1}`},
		{2, `{"model":"hf","input":"hi","max_output_tokens":2}`},
		{2, `{"model":"hf","input":[{"role":"user","content":"hi"}],"max_output_tokens":2,"store":true,"previous_response_id":"resp_x"}`},
		{0, `{"model":"hf","messages":[]}`}, {0, `{}`}, {1, `[]`}, {2, `null`}, {0, `{"model":"hf","messages":"x"}`},
		{0, `{"model":"hf","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}`},
		{1, `{"model":"hf","prompt":"x","n":2}`}, {0, "\xff\xfe"},
	} {
		f.Add(s.path, []byte(s.body))
	}
	_, _, n := startHTTP(f, func(cfg *Config) {
		cfg.Limits.MaxNewTokens = 8
		cfg.Limits.MaxContext = 256
	})
	base := "http://" + n.HTTPAddr()
	client := &http.Client{Timeout: 30 * time.Second}
	f.Fuzz(func(t *testing.T, path uint8, body []byte) {
		body = capTokens(body, 4)
		req, err := http.NewRequest(http.MethodPost, base+fuzzPaths[int(path)%len(fuzzPaths)], bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer test-token-0123456789")
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("POST %s %q: %v", req.URL.Path, body, err)
		}
		defer resp.Body.Close()
		got, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("POST %s %q: reading the answer: %v", req.URL.Path, body, err)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
		case resp.StatusCode >= 400 && resp.StatusCode < 500, resp.StatusCode == http.StatusServiceUnavailable, resp.StatusCode == http.StatusGatewayTimeout:
			var e struct {
				Error struct {
					Message, Type string
				}
			}
			if err := json.Unmarshal(got, &e); err != nil || e.Error.Message == "" || e.Error.Type == "" {
				t.Fatalf("POST %s %q: status %d with %q, want an OpenAI error object", req.URL.Path, body, resp.StatusCode, got)
			}
		default:
			t.Fatalf("POST %s %q: status %d: %s", req.URL.Path, body, resp.StatusCode, got)
		}
	})
}

// capTokens lowers the token counts of a JSON object body (max_tokens,
// max_completion_tokens, max_output_tokens) above limit to limit; any
// other body is returned as it is.
func capTokens(body []byte, limit float64) []byte {
	var m map[string]any
	if json.Unmarshal(body, &m) != nil || m == nil {
		return body
	}
	changed := false
	for _, k := range []string{"max_tokens", "max_completion_tokens", "max_output_tokens"} {
		if v, ok := m[k].(float64); ok && v > limit {
			m[k] = limit
			changed = true
		}
	}
	if !changed {
		return body
	}
	b, err := json.Marshal(m)
	if err != nil {
		return body
	}
	return b
}
