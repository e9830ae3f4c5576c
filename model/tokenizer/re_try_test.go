package tokenizer

import (
	"testing"

	"github.com/dlclark/regexp2/v2"
)

func TestRETry(t *testing.T) {
	re := regexp2.MustCompile(RegexGPT2)
	for _, s := range []string{"ab\xffcd ef", "\xe2\x98 x", "a\xf0\x9f\x98\x80b", "é\xffé"} {
		idx, err := re.FindAllStringIndex(s, -1)
		var pieces []string
		for _, m := range idx {
			pieces = append(pieces, s[m[0]:m[1]])
		}
		t.Logf("%q -> %q %v", s, pieces, err)
	}
}
