package openai

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/switchyard-serving/switchyard/model/chat"
)

func TestHTTPStatusOfCodes(t *testing.T) {
	tests := []struct {
		code codes.Code
		http int
		typ  string
	}{
		{codes.InvalidArgument, 400, "invalid_request_error"},
		{codes.NotFound, 404, "invalid_request_error"},
		{codes.FailedPrecondition, 409, "invalid_request_error"},
		{codes.Unauthenticated, 401, "authentication_error"},
		{codes.PermissionDenied, 403, "permission_error"},
		{codes.ResourceExhausted, 429, "rate_limit_error"},
		{codes.Unavailable, 503, "server_error"},
		{codes.DeadlineExceeded, 504, "server_error"},
		{codes.Internal, 500, "server_error"},
		{codes.DataLoss, 500, "server_error"},
	}
	for _, tc := range tests {
		code, body := errorOf(status.Error(tc.code, "boom"))
		if code != tc.http || body.Error.Type != tc.typ || body.Error.Message != "boom" || body.Error.Code == nil {
			t.Errorf("%v: %d %+v, want %d %s", tc.code, code, body.Error, tc.http, tc.typ)
		}
	}
	if _, body := errorOf(status.Error(codes.NotFound, `model "x" is not served here`)); *body.Error.Code != "model_not_found" {
		t.Errorf("unknown model code %q", *body.Error.Code)
	}
}

func TestToolChoice(t *testing.T) {
	tools := []tool{{Type: "function", Function: toolFunction{Name: "f"}}}
	tests := []struct {
		raw           string
		choice, force string
		bad           bool
	}{
		{"", "auto", "", false},
		{`"none"`, "none", "", false},
		{`"required"`, "required", "", false},
		{`{"type": "function", "function": {"name": "f"}}`, "function", "f", false},
		{`{"type": "function", "name": "f"}`, "function", "f", false},
		{`"sometimes"`, "", "", true},
		{`{"type": "function"}`, "", "", true},
		{`42`, "", "", true},
	}
	for _, tc := range tests {
		choice, forced, err := toolChoiceOf(json.RawMessage(tc.raw), tools)
		if (err != nil) != tc.bad || choice != tc.choice || forced != tc.force {
			t.Errorf("%s: %q %q %v", tc.raw, choice, forced, err)
		}
	}
	if _, _, err := toolChoiceOf(json.RawMessage(`"required"`), nil); err == nil {
		t.Error("required without tools was accepted")
	}
}

func TestSamplingDefaults(t *testing.T) {
	p, err := samplingOf(knobs{})
	if err != nil || p.Temperature != 1 {
		t.Fatalf("%+v %v", p, err)
	}
	q, _ := samplingOf(knobs{})
	if p.Seed == q.Seed {
		t.Error("requests without a seed got the same seed")
	}
	seed := int64(7)
	if r, _ := samplingOf(knobs{seed: &seed}); r.Seed != 7 {
		t.Errorf("seed %d", r.Seed)
	}
	two, zero, bad := 2, float32(0), float32(0.5)
	for name, k := range map[string]knobs{"n": {n: &two}, "penalty": {frequency: &bad}, "top_p": {topP: &zero}} {
		if _, err := samplingOf(k); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := samplingOf(knobs{presence: &zero}); err != nil {
		t.Errorf("a zero penalty is the default: %v", err)
	}
}

func TestMessagesOf(t *testing.T) {
	msgs, err := messagesOf(json.RawMessage(`[
		{"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
		{"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
		{"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{\"x\":1}"},
		{"type": "function_call_output", "call_id": "c1", "output": "42"}]`), "be brief")
	if err != nil {
		t.Fatal(err)
	}
	want := []chat.Message{{Role: "system", Content: "be brief"}, {Role: "user", Content: "a\nb"},
		{Role: "assistant", ToolCalls: []chat.ToolCall{{ID: "c1", Name: "f", Arguments: "{}"}, {ID: "c2", Name: "g", Arguments: `{"x":1}`}}},
		{Role: "tool", Content: "42", ToolCallID: "c1"}}
	if !slices.EqualFunc(msgs, want, func(a, b chat.Message) bool {
		return a.Role == b.Role && a.Content == b.Content && a.ToolCallID == b.ToolCallID && slices.Equal(a.ToolCalls, b.ToolCalls)
	}) {
		t.Errorf("got %+v", msgs)
	}
	for _, bad := range []string{`[{"type": "image", "role": "user"}]`, `[]`, `{"x": 1}`, `[{"role": "user", "content": [{"type": "input_image"}]}]`} {
		if _, err := messagesOf(json.RawMessage(bad), ""); err == nil {
			t.Errorf("%s was accepted", bad)
		}
	}
}

// TestResponseStore: records are private to their client, the latest of a
// session is tracked, and the least recently used and expired records go
// with the sessions nobody can reach any more.
func TestResponseStore(t *testing.T) {
	st := newResponseStore(ResponsesConfig{MaxResponses: 2, TTL: time.Hour})
	a := &responseRecord{id: "a", client: "alice", session: "s1"}
	if orphans := st.put(a); len(orphans) != 0 {
		t.Fatal(orphans)
	}
	get := func(client, id string) *responseRecord { r, _ := st.get(client, id); return r }
	latest := func(r *responseRecord) bool { st.mu.Lock(); defer st.mu.Unlock(); return st.latest[r.session] == r.id }
	if get("bob", "a") != nil || get("alice", "a") != a || !latest(a) {
		t.Fatal("lookup")
	}
	b := &responseRecord{id: "b", client: "alice", session: "s1"} // continues s1
	st.put(b)
	if latest(a) || !latest(b) {
		t.Fatal("latest")
	}
	// One follow-up at a time continues a session in place; a failed one
	// leaves it to replay.
	st2 := newResponseStore(ResponsesConfig{})
	x := &responseRecord{id: "x", client: "alice", session: "s9"}
	st2.put(x)
	if !st2.claim(x) || st2.claim(x) {
		t.Fatal("claim")
	}
	st2.unclaim("s9")
	if st2.claim(x) {
		t.Fatal("a session whose follow-up failed was claimed again")
	}
	c := &responseRecord{id: "c", client: "alice", session: "s2"}
	if orphans := st.put(c); len(orphans) != 0 { // a dropped: not the latest of s1, its session lives on
		t.Fatalf("orphans %v", orphans)
	}
	if get("alice", "a") != nil {
		t.Fatal("a should be gone")
	}
	d := &responseRecord{id: "d", client: "alice", session: "s3"}
	if orphans := st.put(d); !slices.Equal(orphans, []orphan{{"s1", "alice"}}) { // b dropped: s1 is unreachable
		t.Fatalf("orphans %v", orphans)
	}
	if session, ok := st.remove("bob", "c"); ok || session != "" {
		t.Fatal("another client removed a record")
	}
	if session, ok := st.remove("alice", "c"); !ok || session != "s2" {
		t.Fatalf("remove: %q %v", session, ok)
	}
	st.cfg.TTL = time.Nanosecond
	time.Sleep(time.Millisecond)
	if orphans := st.put(&responseRecord{id: "e", client: "alice"}); !slices.Contains(orphans, orphan{"s3", "alice"}) {
		t.Fatalf("expiry orphans %v", orphans)
	}
}

func TestStopAndContentFields(t *testing.T) {
	var r chatRequest
	body := `{"stop": "x", "messages": [{"role": "user", "content": null}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]}`
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r.Stop, []string{"x"}) || r.Messages[0].Content.Set || r.Messages[1].Content.Text != "hi" {
		t.Errorf("%+v", r)
	}
	if err := json.Unmarshal([]byte(`{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}`), &r); err == nil {
		t.Error("an image part was accepted")
	}
}
