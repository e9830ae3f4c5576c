package chat

import (
	"bytes"
	"encoding/json"
	"strings"
)

// Granite 4.0 writes each tool call as
//
//	<tool_call>
//	{"name": "get_weather", "arguments": {"city": "Boston"}}
//	</tool_call>
//
// after optional text; several calls follow each other.
const (
	callOpen  = "<tool_call>"
	callClose = "</tool_call>"
)

// ParsedCall is a tool call read from the model's output.
type ParsedCall struct {
	Name      string
	Arguments string // the arguments object as JSON text
}

// parseCall reads the JSON between the call tags. Arguments given as a JSON
// string holding an object are unwrapped (models sometimes stringify them).
func parseCall(body string) (ParsedCall, bool) {
	var raw struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
		Params    json.RawMessage `json:"parameters"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(body)), &raw); err != nil || raw.Name == "" {
		return ParsedCall{}, false
	}
	args := raw.Arguments
	if len(args) == 0 {
		args = raw.Params
	}
	args = bytes.TrimSpace(args)
	if len(args) == 0 || string(args) == "null" {
		args = []byte("{}")
	}
	if args[0] == '"' {
		var s string
		if json.Unmarshal(args, &s) == nil && json.Valid([]byte(s)) {
			args = []byte(s)
		}
	}
	return ParsedCall{Name: raw.Name, Arguments: string(args)}, true
}

// ParseToolCalls splits a finished output into its text and its tool calls.
// A call whose body is not a JSON object with a name stays in the text, as
// does an unclosed one.
func ParseToolCalls(out string) (content string, calls []ParsedCall) {
	var p ToolParser
	content, calls = p.Feed(out)
	c2, calls2 := p.Flush()
	return content + c2, append(calls, calls2...)
}

// ToolParser separates streamed output into text deltas and tool calls: text
// is released as soon as it cannot be the start of a call; a call is
// released when its closing tag arrives. Not safe for concurrent use.
type ToolParser struct {
	buf    strings.Builder
	inCall bool
}

// Feed adds a delta of output and returns the text that is now safe to show
// and the calls completed by it.
func (p *ToolParser) Feed(delta string) (text string, calls []ParsedCall) {
	p.buf.WriteString(delta)
	s := p.buf.String()
	var out strings.Builder
	for {
		if !p.inCall {
			i := strings.Index(s, callOpen)
			if i < 0 {
				// Hold back a suffix that may be the start of the tag, and
				// the newlines before it (a call's separator, not text).
				keep := partialSuffix(s, callOpen)
				for keep < len(s) && s[len(s)-keep-1] == '\n' {
					keep++
				}
				out.WriteString(s[:len(s)-keep])
				s = s[len(s)-keep:]
				break
			}
			out.WriteString(strings.TrimRight(s[:i], "\n"))
			s = s[i:]
			p.inCall = true
		}
		j := strings.Index(s, callClose)
		if j < 0 {
			break
		}
		body := s[len(callOpen):j]
		if c, ok := parseCall(body); ok {
			calls = append(calls, c)
		} else {
			out.WriteString(s[:j+len(callClose)])
		}
		s = strings.TrimLeft(s[j+len(callClose):], "\n")
		p.inCall = false
	}
	p.buf.Reset()
	p.buf.WriteString(s)
	return out.String(), calls
}

// Flush ends the output: held-back text (an unclosed call included) is released.
func (p *ToolParser) Flush() (text string, calls []ParsedCall) {
	s := p.buf.String()
	p.buf.Reset()
	if p.inCall {
		p.inCall = false
		// A call cut off by max_tokens or a stop may still be whole JSON.
		body := strings.TrimPrefix(s, callOpen)
		if c, ok := parseCall(body); ok {
			return "", []ParsedCall{c}
		}
	}
	return s, nil
}

// partialSuffix is the length of the longest suffix of s that is a proper
// prefix of tag.
func partialSuffix(s, tag string) int {
	for n := min(len(s), len(tag)-1); n > 0; n-- {
		if strings.HasSuffix(s, tag[:n]) {
			return n
		}
	}
	return 0
}
