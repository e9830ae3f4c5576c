package tokenizer

import "unicode/utf8"

// The GPT-2 byte-level alphabet maps every byte to a printable rune so that
// BPE vocabularies can be stored as text: printable Latin-1 bytes map to
// themselves and the remaining 68 bytes map, in byte order, to U+0100 and up.

const byteRuneLimit = 256 + 68 // all mapped runes are below this

var (
	byteToRune [256]rune
	byteToStr  [256]string
	runeToByte [byteRuneLimit]int16 // -1 where the rune is not in the alphabet
)

func init() {
	for i := range runeToByte {
		runeToByte[i] = -1
	}
	next := rune(256)
	for b := 0; b < 256; b++ {
		r := rune(b)
		if !(b >= '!' && b <= '~' || b >= 0xA1 && b <= 0xAC || b >= 0xAE && b <= 0xFF) {
			r = next
			next++
		}
		byteToRune[b] = r
		byteToStr[b] = string(r)
		runeToByte[r] = int16(b)
	}
}

// byteLevelEncode maps raw bytes to their byte-level string form.
func byteLevelEncode(raw []byte) string {
	buf := make([]byte, 0, 2*len(raw))
	for _, b := range raw {
		buf = utf8.AppendRune(buf, byteToRune[b])
	}
	return string(buf)
}

// byteLevelDecode maps a byte-level token string back to raw bytes. ok is
// false when the string contains a rune outside the byte-level alphabet.
func byteLevelDecode(s string) (raw []byte, ok bool) {
	raw = make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n <= 1 || r >= byteRuneLimit || runeToByte[r] < 0 {
			return nil, false
		}
		raw = append(raw, byte(runeToByte[r]))
		i += n
	}
	return raw, true
}
