package trunknode

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/packages/param"
	"github.com/openai/openai-go/v3/responses"
	"github.com/openai/openai-go/v3/shared"
	"google.golang.org/grpc"

	"github.com/switchyard-serving/switchyard/internal/rpc"
	pb "github.com/switchyard-serving/switchyard/proto/switchyard/v1"
)

// startHTTP runs a node with the OpenAI-compatible API and returns an
// official SDK client for it.
func startHTTP(t testing.TB, edit func(*Config)) (openai.Client, pb.SwitchyardClient, *Node) {
	t.Helper()
	c, n := startLocal(t, func(cfg *Config) {
		cfg.HTTPListen = "127.0.0.1:0"
		cfg.APIToken = "test-token-0123456789"
		if edit != nil {
			edit(cfg)
		}
	})
	cl := openai.NewClient(option.WithBaseURL("http://"+n.HTTPAddr()+"/v1"), option.WithAPIKey("test-token-0123456789"), option.WithMaxRetries(0))
	return cl, c, n
}

const modelName = "hf" // config.ModelName of the fixture's folder

func graniteTemplate(cfg *Config) {
	cfg.Limits.MaxContext = 2048 // its tools system prompt is long in the tiny vocabulary
	cfg.ChatTemplate = filepath.Join("..", "model", "chat", "testdata", "granite-4.0.jinja")
}

// TestOpenAIChatMatchesGRPC: the same conversation over the SDK and over the
// gRPC Chat call gives the same greedy text; streaming gives it too, with
// usage in the last chunk.
func TestOpenAIChatMatchesGRPC(t *testing.T) {
	cl, grpcClient, _ := startHTTP(t, nil)
	ctx := context.Background()
	models, err := cl.Models.List(ctx)
	if err != nil || len(models.Data) != 1 || models.Data[0].ID != modelName {
		t.Fatalf("models: %+v, %v", models, err)
	}
	params := openai.ChatCompletionNewParams{
		Model:       modelName,
		Messages:    []openai.ChatCompletionMessageParamUnion{openai.SystemMessage("Be brief."), openai.UserMessage("Hello there")},
		Temperature: openai.Float(0),
		MaxTokens:   openai.Int(12),
		Logprobs:    openai.Bool(true), TopLogprobs: openai.Int(3),
	}
	resp, err := cl.Chat.Completions.New(ctx, params)
	if err != nil {
		t.Fatal(err)
	}
	want := collect(must(grpcClient.Chat(ctx, &pb.ChatRequest{Messages: []*pb.ChatMessage{{Role: "system", Content: "Be brief."}, {Role: "user", Content: "Hello there"}},
		MaxTokens: 12, IgnoreEos: false}, grpc.PerRPCCredsCallOption{Creds: rpc.BearerToken("test-token-0123456789")})))
	if want.status != nil {
		t.Fatal(want.status)
	}
	got := resp.Choices[0]
	if got.Message.Content != want.text {
		t.Errorf("HTTP %q, gRPC %q", got.Message.Content, want.text)
	}
	if int(resp.Usage.CompletionTokens) != len(want.ids) || resp.Usage.PromptTokens == 0 {
		t.Errorf("usage %+v, gRPC generated %d", resp.Usage, len(want.ids))
	}
	if len(got.Logprobs.Content) != len(want.ids) || len(got.Logprobs.Content[0].TopLogprobs) != 3 {
		t.Errorf("logprobs: %d entries (want %d)", len(got.Logprobs.Content), len(want.ids))
	} else if top := got.Logprobs.Content[0].TopLogprobs[0]; top.Logprob != got.Logprobs.Content[0].Logprob {
		t.Errorf("greedy: the chosen token's logprob %v is not the top one %v", got.Logprobs.Content[0].Logprob, top.Logprob)
	}

	params.StreamOptions = openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)}
	stream := cl.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if acc.Choices[0].Message.Content != want.text {
		t.Errorf("streamed %q, want %q", acc.Choices[0].Message.Content, want.text)
	}
	if acc.Usage.CompletionTokens != resp.Usage.CompletionTokens {
		t.Errorf("streamed usage %+v, want %+v", acc.Usage, resp.Usage)
	}
	if fr := acc.Choices[0].FinishReason; fr != "length" && fr != "stop" {
		t.Errorf("finish_reason %q", fr)
	}
}

// enumSchema is a schema whose documents are bounded, so even a random
// model completes one within the token budget.
const enumSchema = `{"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
 "size": {"type": "object", "properties": {"unit": {"const": "cm"}, "big": {"type": ["boolean", "null"]}}, "required": ["unit", "big"]}},
 "required": ["color", "ok", "size"], "additionalProperties": false}`

// TestOpenAIJSONSchema: with response_format json_schema every sampled
// output parses and matches the schema.
func TestOpenAIJSONSchema(t *testing.T) {
	cl, _, _ := startHTTP(t, nil)
	ctx := context.Background()
	var schema map[string]any
	if err := json.Unmarshal([]byte(enumSchema), &schema); err != nil {
		t.Fatal(err)
	}
	for seed := range int64(6) {
		resp, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
			Model: modelName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Describe the thing as JSON.")},
			Temperature: openai.Float(1), Seed: openai.Int(seed), MaxTokens: openai.Int(200),
			ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
				JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "thing", Schema: schema, Strict: openai.Bool(true)}}},
		})
		if err != nil {
			t.Fatal(err)
		}
		out := resp.Choices[0].Message.Content
		var doc struct {
			Color string `json:"color"`
			OK    *bool  `json:"ok"`
			Size  struct {
				Unit string `json:"unit"`
				Big  *bool  `json:"big"`
			} `json:"size"`
		}
		dec := json.NewDecoder(strings.NewReader(out))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&doc); err != nil {
			t.Fatalf("seed %d: %q does not parse: %v (finish %s)", seed, out, err, resp.Choices[0].FinishReason)
		}
		if !strings.Contains("red green blue", doc.Color) || doc.Color == "" || doc.OK == nil || doc.Size.Unit != "cm" {
			t.Errorf("seed %d: %q does not match the schema", seed, out)
		}
		if resp.Choices[0].FinishReason != "stop" {
			t.Errorf("seed %d: finish %q", seed, resp.Choices[0].FinishReason)
		}
	}
	// json_object: some JSON object.
	resp, err := cl.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: modelName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("JSON please")},
		Temperature: openai.Float(0), MaxTokens: openai.Int(64),
		ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONObject: &shared.ResponseFormatJSONObjectParam{}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if out := resp.Choices[0].Message.Content; !strings.HasPrefix(strings.TrimSpace(out), "{") {
		t.Errorf("json_object output %q does not start an object", out)
	}
}

// TestOpenAIToolCalls: with Granite 4.0's template, tool_choice "required"
// yields a parsed call of the tool with schema-valid arguments, streamed or
// not; the call and its result render back for the next turn.
func TestOpenAIToolCalls(t *testing.T) {
	cl, _, _ := startHTTP(t, graniteTemplate)
	ctx := context.Background()
	tools := []openai.ChatCompletionToolUnionParam{openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{
		Name: "get_weather", Description: openai.String("Current weather in a city"),
		Parameters: shared.FunctionParameters{"type": "object", "properties": map[string]any{"city": map[string]any{"enum": []string{"Boston", "Paris"}}},
			"required": []string{"city"}, "additionalProperties": false},
	})}
	params := openai.ChatCompletionNewParams{
		Model: modelName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Weather in Paris?")},
		Tools: tools, ToolChoice: openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("required")},
		Temperature: openai.Float(0), MaxTokens: openai.Int(120),
	}
	resp, err := cl.Chat.Completions.New(ctx, params)
	if err != nil {
		var apiErr *openai.Error
		if errors.As(err, &apiErr) {
			t.Fatal(apiErr.Message)
		}
		t.Fatal(err)
	}
	msg := resp.Choices[0].Message
	if len(msg.ToolCalls) != 1 || msg.ToolCalls[0].Function.Name != "get_weather" || resp.Choices[0].FinishReason != "tool_calls" {
		t.Fatalf("reply %+v, finish %q", msg, resp.Choices[0].FinishReason)
	}
	var args struct{ City string }
	if err := json.Unmarshal([]byte(msg.ToolCalls[0].Function.Arguments), &args); err != nil || (args.City != "Boston" && args.City != "Paris") {
		t.Errorf("arguments %q: %v", msg.ToolCalls[0].Function.Arguments, err)
	}
	stream := cl.Chat.Completions.NewStreaming(ctx, params)
	var acc openai.ChatCompletionAccumulator
	for stream.Next() {
		acc.AddChunk(stream.Current())
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if sc := acc.Choices[0].Message.ToolCalls; len(sc) != 1 || sc[0].Function.Arguments != msg.ToolCalls[0].Function.Arguments {
		t.Errorf("streamed calls %+v, want %+v", sc, msg.ToolCalls)
	}
	// The next turn: the assistant's call and the tool's result.
	params.Messages = append(params.Messages, msg.ToParam(), openai.ToolMessage(`{"temp": 21}`, msg.ToolCalls[0].ID))
	params.ToolChoice = openai.ChatCompletionToolChoiceOptionUnionParam{OfAuto: openai.String("none")}
	params.MaxTokens = openai.Int(8)
	if _, err := cl.Chat.Completions.New(ctx, params); err != nil {
		t.Fatal(err)
	}
}

// TestOpenAIErrors: bad requests get OpenAI error bodies with the right
// status, through the SDK's error type.
func TestOpenAIErrors(t *testing.T) {
	cl, _, n := startHTTP(t, nil)
	ctx := context.Background()
	user := []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")}
	tests := []struct {
		name   string
		client openai.Client
		params openai.ChatCompletionNewParams
		status int
		text   string
	}{
		{"unknown model", cl, openai.ChatCompletionNewParams{Model: "gpt-9", Messages: user}, 404, "not served"},
		{"bad token", openai.NewClient(option.WithBaseURL("http://"+n.HTTPAddr()+"/v1"), option.WithAPIKey("wrong"), option.WithMaxRetries(0)),
			openai.ChatCompletionNewParams{Model: modelName, Messages: user}, 401, "API key"},
		{"n > 1", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: user, N: openai.Int(2)}, 400, "n = 2"},
		{"empty messages", cl, openai.ChatCompletionNewParams{Model: modelName}, 400, "messages"},
		{"bad role", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: []openai.ChatCompletionMessageParamUnion{
			{OfUser: &openai.ChatCompletionUserMessageParam{Content: openai.ChatCompletionUserMessageParamContentUnion{OfString: openai.String("x")}, Role: "root"}}}}, 400, "role"},
		{"too many tokens", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: user, MaxTokens: openai.Int(100000)}, 400, "max_tokens"},
		{"unsupported schema", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: user,
			ResponseFormat: openai.ChatCompletionNewParamsResponseFormatUnion{OfJSONSchema: &shared.ResponseFormatJSONSchemaParam{
				JSONSchema: shared.ResponseFormatJSONSchemaJSONSchemaParam{Name: "x", Schema: map[string]any{"type": "string", "pattern": "^a+$"}}}}}, 400, "pattern"},
		{"tools on a template without them", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: user, Tools: []openai.ChatCompletionToolUnionParam{
			openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "f"})}}, 400, "tools"},
		{"unknown session", cl, openai.ChatCompletionNewParams{Model: modelName, Messages: user}, 404, "session"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var opts []option.RequestOption
			if tc.name == "unknown session" {
				opts = append(opts, option.WithJSONSet("session_id", "nope"))
			}
			_, err := tc.client.Chat.Completions.New(ctx, tc.params, opts...)
			var apiErr *openai.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("err = %v, want an API error", err)
			}
			if apiErr.StatusCode != tc.status || !strings.Contains(apiErr.Message, tc.text) || apiErr.Type == "" {
				t.Errorf("status %d type %q message %q, want %d containing %q", apiErr.StatusCode, apiErr.Type, apiErr.Message, tc.status, tc.text)
			}
		})
	}
}

// TestOpenAIResponses: a follow-up with previous_response_id continues the
// kept session in place (its earlier tokens are not read again); a branch
// from the same response replays the recorded tokens and gives the same
// tokens; deleted responses are gone.
func TestOpenAIResponses(t *testing.T) {
	cl, _, _ := startHTTP(t, nil)
	ctx := context.Background()
	first, err := cl.Responses.New(ctx, responses.ResponseNewParams{Model: modelName, Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("Hi")},
		Temperature: openai.Float(0), MaxOutputTokens: openai.Int(6)})
	if err != nil {
		t.Fatal(err)
	}
	next := responses.ResponseNewParams{Model: modelName, Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("And then?")},
		PreviousResponseID: openai.String(first.ID), Temperature: openai.Float(0), MaxOutputTokens: openai.Int(6)}
	inPlace, err := cl.Responses.New(ctx, next)
	if err != nil {
		t.Fatal(err)
	}
	if inPlace.Usage.InputTokensDetails.CachedTokens == 0 {
		t.Errorf("the follow-up read its history again: usage %+v", inPlace.Usage)
	}
	branch, err := cl.Responses.New(ctx, next) // first is no longer its session's latest
	if err != nil {
		t.Fatal(err)
	}
	if branch.OutputText() != inPlace.OutputText() {
		t.Errorf("replayed branch %q, in-place continuation %q", branch.OutputText(), inPlace.OutputText())
	}
	if inPlace.Status != "incomplete" || inPlace.IncompleteDetails.Reason != "max_output_tokens" {
		t.Errorf("a response cut by max_output_tokens: status %q, details %+v", inPlace.Status, inPlace.IncompleteDetails)
	}
	if branch.Usage.InputTokensDetails.CachedTokens != 0 {
		t.Errorf("a branch reads the recorded tokens again: usage %+v", branch.Usage)
	}
	got, err := cl.Responses.Get(ctx, inPlace.ID, responses.ResponseGetParams{})
	if err != nil || got.OutputText() != inPlace.OutputText() {
		t.Fatalf("get: %v", err)
	}
	// Streaming: the events carry the same text.
	stream := cl.Responses.NewStreaming(ctx, next)
	var text strings.Builder
	completed := false
	for stream.Next() {
		ev := stream.Current()
		switch ev.Type {
		case "response.output_text.delta":
			text.WriteString(ev.Delta)
		case "response.completed", "response.incomplete":
			completed = true
		}
	}
	if err := stream.Err(); err != nil {
		t.Fatal(err)
	}
	if !completed || text.String() != inPlace.OutputText() {
		t.Errorf("streamed %q (completed %v), want %q", text.String(), completed, inPlace.OutputText())
	}
	if err := cl.Responses.Delete(ctx, inPlace.ID); err != nil {
		t.Fatal(err)
	}
	_, err = cl.Responses.Get(ctx, inPlace.ID, responses.ResponseGetParams{})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("get after delete: %v", err)
	}
	_, err = cl.Responses.New(ctx, responses.ResponseNewParams{Model: modelName, Input: responses.ResponseNewParamsInputUnion{OfString: openai.String("x")},
		PreviousResponseID: openai.String("resp_nope")})
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("unknown previous response: %v", err)
	}
}

// TestOpenAIDisconnectCancels: a streaming client that goes away ends its
// generation and frees its session.
func TestOpenAIDisconnectCancels(t *testing.T) {
	cl, _, n := startHTTP(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	stream := cl.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{Model: modelName,
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("go on")}, MaxTokens: openai.Int(250),
		Temperature: openai.Float(0)}, option.WithJSONSet("ignore_eos", true))
	if !stream.Next() {
		t.Fatal(stream.Err())
	}
	cancel()
	stream.Close()
	waitUntil(t, "the generation to end", func() bool {
		running, waiting := n.Load()
		sessions, rec, kv := n.Store().Usage()
		return running == 0 && waiting == 0 && sessions == 0 && rec == 0 && kv == 0
	})
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// TestOpenAINodeSDK runs tests/openai-node/check.mjs (the official openai npm
// package) against the API. It needs node and the package installed there
// (npm ci --prefix tests/openai-node; .ci/run does it).
func TestOpenAINodeSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed: skipping the openai npm package check")
	}
	dir := filepath.Join("..", "tests", "openai-node")
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "openai")); err != nil {
		t.Skip("the openai npm package is not installed: run npm ci --prefix tests/openai-node")
	}
	_, _, n := startHTTP(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "check.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SWITCHYARD_BASE_URL=http://"+n.HTTPAddr()+"/v1", "SWITCHYARD_API_KEY=test-token-0123456789", "SWITCHYARD_MODEL="+modelName)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ok") {
		t.Fatalf("node check: %v\n%s", err, out)
	}
}

// TestOpenAISessionTurns: chat completions keep a conversation with the
// session_id extension; a follow-up without max_tokens gets what the context
// leaves after the session's tokens (not after its own prompt only), and a
// streamed request that fails before any output gets its HTTP status.
func TestOpenAISessionTurns(t *testing.T) {
	cl, _, _ := startHTTP(t, func(cfg *Config) { cfg.Limits.MaxNewTokens = 512 })
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{Model: modelName, Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("Hi")},
		Temperature: openai.Float(0), MaxTokens: openai.Int(100)}
	first, err := cl.Chat.Completions.New(ctx, params, option.WithJSONSet("session_id", "new"), option.WithJSONSet("ignore_eos", true))
	if err != nil {
		t.Fatal(err)
	}
	var sid struct {
		SessionID string `json:"session_id"`
	}
	if err := json.Unmarshal([]byte(first.RawJSON()), &sid); err != nil || sid.SessionID == "" {
		t.Fatalf("no session id in %s", first.RawJSON())
	}
	params.Messages = []openai.ChatCompletionMessageParamUnion{openai.UserMessage("More")}
	params.MaxTokens = param.Opt[int64]{}
	next, err := cl.Chat.Completions.New(ctx, params, option.WithJSONSet("session_id", sid.SessionID))
	if err != nil {
		t.Fatalf("a follow-up without max_tokens: %v", err)
	}
	if next.Usage.PromptTokensDetails.CachedTokens == 0 {
		t.Errorf("the follow-up read its history again: %+v", next.Usage)
	}
	stream := cl.Chat.Completions.NewStreaming(ctx, params, option.WithJSONSet("session_id", "s-unknown"))
	for stream.Next() {
	}
	var apiErr *openai.Error
	if err := stream.Err(); !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusNotFound {
		t.Errorf("a streamed request on an unknown session: %v, want 404", err)
	}
}
