package tokenizer

import "unicode/utf8"

// StreamDecoder turns a stream of token ids into text, returning only
// complete UTF-8 characters: bytes of a character split across tokens are
// held back until the character is complete. It is not safe for concurrent
// use; use one per sequence.
type StreamDecoder struct {
	t   *Tokenizer
	buf []byte // held-back bytes: a prefix of a possibly valid character
}

// NewStreamDecoder returns a decoder for one token stream.
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder {
	return &StreamDecoder{t: t}
}

// Add appends token id to the stream and returns the text that became
// complete. Bytes that can never form a valid character are returned as
// U+FFFD, one per byte, as Go's range loop decodes them. Ids not in the
// vocabulary are ignored.
func (d *StreamDecoder) Add(id int) string {
	b := d.t.tokenBytes(id)
	if len(d.buf) == 0 {
		// Fast path: the token alone is complete, valid UTF-8.
		if utf8.Valid(b) {
			return string(b)
		}
	}
	d.buf = append(d.buf, b...)
	return d.drain(false)
}

// Flush returns any held-back bytes, each invalid byte as U+FFFD, and
// resets the decoder.
func (d *StreamDecoder) Flush() string {
	return d.drain(true)
}

// Reset drops any held-back bytes.
func (d *StreamDecoder) Reset() { d.buf = d.buf[:0] }

func (d *StreamDecoder) drain(final bool) string {
	buf := d.buf
	out := make([]byte, 0, len(buf)+8)
	i := 0
	for i < len(buf) {
		if !final && !utf8.FullRune(buf[i:]) {
			break // an incomplete character: wait for more bytes
		}
		r, n := utf8.DecodeRune(buf[i:])
		if r == utf8.RuneError && n <= 1 {
			out = utf8.AppendRune(out, utf8.RuneError)
			i++
			continue
		}
		out = append(out, buf[i:i+n]...)
		i += n
	}
	d.buf = append(d.buf[:0], buf[i:]...)
	return string(out)
}
