package hub

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultInclude selects what a Granite 4.0-H Hugging Face folder needs to
// serve: the config, the safetensors weights and their index, and the
// tokenizer with its chat template.
var DefaultInclude = []string{
	"config.json",
	"generation_config.json",
	"tokenizer.json",
	"tokenizer_config.json",
	"special_tokens_map.json",
	"chat_template.jinja",
	"*.safetensors",
	"model.safetensors.index.json",
}

// compileGlobs returns a matcher for repo paths that accepts a path matching
// any of globs. The globs follow huggingface_hub's allow_patterns (Python's
// fnmatch): '*' matches any run of characters, '/' included; '?' one
// character; [abc], [a-z] and [!abc] a class; a glob ending in '/' matches
// everything under that folder.
func compileGlobs(globs []string) (func(string) bool, error) {
	res := make([]*regexp.Regexp, 0, len(globs))
	for _, g := range globs {
		if g == "" {
			return nil, fmt.Errorf("empty include glob")
		}
		if strings.HasSuffix(g, "/") {
			g += "*"
		}
		re, err := regexp.Compile(globRegexp(g))
		if err != nil {
			return nil, fmt.Errorf("include glob %q: %w", g, err)
		}
		res = append(res, re)
	}
	return func(p string) bool {
		for _, re := range res {
			if re.MatchString(p) {
				return true
			}
		}
		return false
	}, nil
}

// globRegexp translates an fnmatch glob to an anchored regular expression.
func globRegexp(g string) string {
	var b strings.Builder
	b.WriteString(`^(?s:`)
	for i := 0; i < len(g); i++ {
		switch g[i] {
		case '*':
			b.WriteString(`.*`)
		case '?':
			b.WriteString(`.`)
		case '[':
			j := i + 1
			if j < len(g) && g[j] == '!' {
				j++
			}
			if j < len(g) && g[j] == ']' {
				j++
			}
			for j < len(g) && g[j] != ']' {
				j++
			}
			if j >= len(g) { // no closing bracket: a literal '['
				b.WriteString(`\[`)
				continue
			}
			class := g[i+1 : j]
			b.WriteByte('[')
			if strings.HasPrefix(class, "!") {
				b.WriteByte('^')
				class = class[1:]
			} else if strings.HasPrefix(class, "^") {
				b.WriteByte('\\')
			}
			b.WriteString(strings.NewReplacer(`\`, `\\`, `[`, `\[`).Replace(class))
			b.WriteByte(']')
			i = j
		default:
			b.WriteString(regexp.QuoteMeta(g[i : i+1]))
		}
	}
	b.WriteString(`)$`)
	return b.String()
}
