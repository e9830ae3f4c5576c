package safetensors

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

const fixtureDir = "../../../shared/fixtures/granite-hybrid-tiny/hf"

// raw assembles a file from a header string and data bytes (no padding).
func raw(header string, data []byte) []byte {
	b := make([]byte, 8, 8+len(header)+len(data))
	binary.LittleEndian.PutUint64(b, uint64(len(header)))
	b = append(b, header...)
	return append(b, data...)
}

// pattern is the byte fill used by the writer tests: it depends on the tensor and
// the position so misplaced data is caught.
func pattern(i int, dst []byte) error {
	for j := range dst {
		dst[j] = byte(i*31 + j*7 + j>>8)
	}
	return nil
}

var roundTripSpecs = []TensorSpec{
	{Name: "z.last.weight", DType: tensor.BF16, Shape: []int{3, 5}},
	{Name: "a.first", DType: tensor.F32, Shape: []int{7}},
	{Name: "m.half", DType: tensor.F16, Shape: []int{2, 3, 4}},
	{Name: "scalar", DType: tensor.F32, Shape: []int{}},
	{Name: "empty", DType: tensor.F32, Shape: []int{0, 4}},
	{Name: "big", DType: tensor.BF16, Shape: []int{300, 9}},
	{Name: `odd "name" <é>`, DType: tensor.F16, Shape: []int{1}},
}

func writeTemp(t testing.TB, dir, name string, specs []TensorSpec, meta map[string]string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := WriteFile(p, specs, meta, pattern); err != nil {
		t.Fatalf("WriteFile: %v", err)
	}
	return p
}

func TestWriteReadRoundTrip(t *testing.T) {
	dir := t.TempDir()
	meta := map[string]string{"format": "pt", "note": "round trip"}
	p := writeTemp(t, dir, "rt.safetensors", roundTripSpecs, meta)

	raw, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(raw)
	if (8+n)%8 != 0 {
		t.Errorf("header length %d: data does not start 8-byte aligned", n)
	}
	hdr := string(raw[8 : 8+n])
	if trimmed := strings.TrimRight(hdr, " "); len(hdr)-len(trimmed) >= 8 || !strings.HasSuffix(trimmed, "}") {
		t.Errorf("header padding wrong: %q", hdr[len(hdr)-10:])
	}
	// Tensors are laid out in spec order: the first spec starts at offset 0.
	if !strings.Contains(hdr, `"z.last.weight":{"dtype":"BF16","shape":[3,5],"data_offsets":[0,30]}`) {
		t.Errorf("first tensor not at offset 0: %s", hdr)
	}

	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	wantNames := make([]string, 0, len(roundTripSpecs))
	for i, s := range roundTripSpecs {
		wantNames = append(wantNames, s.Name)
		got, ok := f.Tensor(s.Name)
		if !ok {
			t.Fatalf("tensor %q missing", s.Name)
		}
		if got.Name != s.Name || got.DType != s.DType || !slices.Equal(got.Shape, s.Shape) {
			t.Errorf("tensor %q: got %s %v, want %s %v", s.Name, got.DType, got.Shape, s.DType, s.Shape)
		}
		size, _ := specBytes(s)
		want := make([]byte, size)
		pattern(i, want)
		if !bytes.Equal(got.Data, want) {
			t.Errorf("tensor %q: data differs", s.Name)
		}
		if got.Elements()*elemBytes(got.DType) != len(got.Data) {
			t.Errorf("tensor %q: Elements %d inconsistent with %d bytes", s.Name, got.Elements(), len(got.Data))
		}
	}
	slices.Sort(wantNames)
	if !slices.Equal(f.Names(), wantNames) {
		t.Errorf("Names = %q, want %q", f.Names(), wantNames)
	}
	if f.Len() != len(wantNames) {
		t.Errorf("Len = %d", f.Len())
	}
	if got := f.Metadata(); len(got) != 2 || got["format"] != "pt" || got["note"] != "round trip" {
		t.Errorf("Metadata = %v", got)
	}
	if _, ok := f.Tensor("nope"); ok {
		t.Error("Tensor(nope) found")
	}
	// Shape is a copy: changing it does not change the file.
	tt, _ := f.Tensor("big")
	tt.Shape[0] = 1
	if tt2, _ := f.Tensor("big"); tt2.Shape[0] != 300 {
		t.Error("Tensor shape aliases the file's table")
	}
	if f.Path() != p {
		t.Errorf("Path = %q", f.Path())
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestWriteNoMetadataAndNilFill(t *testing.T) {
	p := filepath.Join(t.TempDir(), "zeros.safetensors")
	specs := []TensorSpec{{Name: "w", DType: tensor.F32, Shape: []int{4, 4}}}
	if err := WriteFile(p, specs, nil, nil); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w, _ := f.Tensor("w")
	if len(w.Data) != 64 || !bytes.Equal(w.Data, make([]byte, 64)) {
		t.Errorf("nil fill: got % x", w.Data)
	}
	if len(f.Metadata()) != 0 {
		t.Errorf("Metadata = %v", f.Metadata())
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name  string
		specs []TensorSpec
		fill  func(int, []byte) error
		want  error
		msg   string
	}{
		{"quantized dtype", []TensorSpec{{"q", tensor.Q8_0, []int{32}}}, nil, ErrSpec, `"q"`},
		{"negative dim", []TensorSpec{{"neg", tensor.F32, []int{2, -1}}}, nil, ErrSpec, `"neg"`},
		{"nil shape", []TensorSpec{{"nil", tensor.F32, nil}}, nil, ErrSpec, `"nil"`},
		{"empty name", []TensorSpec{{"", tensor.F32, []int{1}}}, nil, ErrSpec, "name"},
		{"metadata name", []TensorSpec{{"__metadata__", tensor.F32, []int{1}}}, nil, ErrSpec, "__metadata__"},
		{"duplicate", []TensorSpec{{"d", tensor.F32, []int{1}}, {"d", tensor.F16, []int{1}}}, nil, ErrDuplicate, `"d"`},
		{"huge", []TensorSpec{{"h", tensor.F32, []int{1 << 40, 1 << 40}}}, nil, ErrSpec, `"h"`},
		{"fill fails", []TensorSpec{{"a", tensor.F32, []int{1}}, {"b", tensor.F32, []int{2}}},
			func(i int, _ []byte) error {
				if i == 1 {
					return errors.New("boom")
				}
				return nil
			}, nil, `tensor "b": fill: boom`},
	}
	for _, c := range cases {
		p := filepath.Join(dir, "out.safetensors")
		err := WriteFile(p, c.specs, nil, c.fill)
		if err == nil {
			t.Errorf("%s: no error", c.name)
			continue
		}
		if c.want != nil && !errors.Is(err, c.want) {
			t.Errorf("%s: error %v does not wrap %v", c.name, err, c.want)
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.msg)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed writes left files behind: %v", ents)
	}
}

func TestFixture(t *testing.T) {
	p := filepath.Join(fixtureDir, "model.safetensors")
	if _, err := os.Stat(p); err != nil {
		t.Skipf("fixture not available: %v", err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	emb, ok := f.Tensor("model.embed_tokens.weight")
	if !ok {
		t.Fatal("model.embed_tokens.weight missing")
	}
	if emb.DType != tensor.BF16 || !slices.Equal(emb.Shape, []int{464, 64}) || len(emb.Data) != 464*64*2 {
		t.Errorf("embed_tokens: %s %v %d bytes", emb.DType, emb.Shape, len(emb.Data))
	}
	exp, ok := f.Tensor("model.layers.0.block_sparse_moe.input_linear.weight")
	if !ok || !slices.Equal(exp.Shape, []int{8, 64, 64}) {
		t.Errorf("input_linear: %v %v", ok, exp.Shape)
	}
	for _, n := range f.Names() {
		if tt, _ := f.Tensor(n); tt.DType != tensor.BF16 {
			t.Errorf("%s: dtype %s, want BF16", n, tt.DType)
		}
	}
	if m := f.Metadata(); m["format"] != "pt" {
		t.Errorf("metadata = %v", m)
	}

	c, err := OpenDir(fixtureDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if fs := c.Files(); len(fs) != 1 || filepath.Base(fs[0]) != "model.safetensors" {
		t.Errorf("Files = %v", fs)
	}
	if !slices.Equal(c.Names(), f.Names()) {
		t.Errorf("checkpoint names differ from the file's")
	}
	ce, ok := c.Tensor("model.embed_tokens.weight")
	if !ok || !bytes.Equal(ce.Data, emb.Data) {
		t.Error("checkpoint embed_tokens differs")
	}
}

func TestShardedCheckpoint(t *testing.T) {
	dir := t.TempDir()
	s1 := []TensorSpec{{"a.weight", tensor.BF16, []int{4, 8}}, {"b.weight", tensor.F32, []int{3}}}
	s2 := []TensorSpec{{"c.weight", tensor.F16, []int{2, 2}}}
	writeTemp(t, dir, "model-00001-of-00002.safetensors", s1, nil)
	writeTemp(t, dir, "model-00002-of-00002.safetensors", s2, nil)
	// A stray file the index does not name must not be opened.
	writeTemp(t, dir, "stray.safetensors", []TensorSpec{{"a.weight", tensor.F32, []int{1}}}, nil)
	wm := map[string]string{
		"a.weight": "model-00001-of-00002.safetensors",
		"b.weight": "model-00001-of-00002.safetensors",
		"c.weight": "model-00002-of-00002.safetensors",
	}
	if err := WriteIndex(dir, wm, 4*8*2+3*4+2*2*2); err != nil {
		t.Fatal(err)
	}
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Names(); !slices.Equal(got, []string{"a.weight", "b.weight", "c.weight"}) {
		t.Errorf("Names = %v", got)
	}
	if fs := c.Files(); len(fs) != 2 || filepath.Base(fs[0]) != "model-00001-of-00002.safetensors" || filepath.Base(fs[1]) != "model-00002-of-00002.safetensors" {
		t.Errorf("Files = %v", fs)
	}
	cw, ok := c.Tensor("c.weight")
	want := make([]byte, 8)
	pattern(0, want)
	if !ok || cw.DType != tensor.F16 || !bytes.Equal(cw.Data, want) {
		t.Errorf("c.weight = %+v", cw)
	}
	if _, ok := c.Tensor("missing"); ok {
		t.Error("found missing tensor")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Tensor("a.weight"); ok {
		t.Error("Tensor after Close")
	}

	// Index entries that do not match the shards.
	bad := []struct {
		name string
		wm   map[string]string
		msg  string
	}{
		{"wrong shard", map[string]string{"a.weight": "model-00002-of-00002.safetensors", "c.weight": "model-00002-of-00002.safetensors"}, `"a.weight"`},
		{"missing tensor", map[string]string{"zzz": "model-00002-of-00002.safetensors"}, `"zzz"`},
		{"missing shard", map[string]string{"a.weight": "model-00009.safetensors"}, "model-00009"},
	}
	for _, b := range bad {
		if err := WriteIndex(dir, b.wm, 0); err != nil {
			t.Fatal(err)
		}
		_, err := OpenDir(dir)
		if err == nil || !strings.Contains(err.Error(), b.msg) {
			t.Errorf("%s: OpenDir error %v, want mention of %s", b.name, err, b.msg)
		}
	}
	os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map":{"a.weight":"../x.safetensors"}}`), 0o644)
	if _, err := OpenDir(dir); !errors.Is(err, ErrFormat) {
		t.Errorf("path traversal in index: %v", err)
	}
	os.WriteFile(filepath.Join(dir, IndexFile), []byte(`{"weight_map":`), 0o644)
	if _, err := OpenDir(dir); !errors.Is(err, ErrFormat) {
		t.Errorf("bad index JSON: %v", err)
	}
	if err := WriteIndex(dir, map[string]string{"a": "sub/x.safetensors"}, 0); !errors.Is(err, ErrSpec) {
		t.Errorf("WriteIndex with a path: %v", err)
	}
}

func TestOpenDirGlobAndErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := OpenDir(dir); !errors.Is(err, ErrNoFiles) {
		t.Errorf("empty dir: %v", err)
	}
	writeTemp(t, dir, "b.safetensors", []TensorSpec{{"x", tensor.F32, []int{1}}}, nil)
	writeTemp(t, dir, "a.safetensors", []TensorSpec{{"y", tensor.F32, []int{1}}}, nil)
	os.WriteFile(filepath.Join(dir, "notes.txt"), []byte("hi"), 0o644)
	c, err := OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fs := c.Files(); len(fs) != 2 || filepath.Base(fs[0]) != "a.safetensors" || filepath.Base(fs[1]) != "b.safetensors" {
		t.Errorf("Files = %v", fs)
	}
	if !slices.Equal(c.Names(), []string{"x", "y"}) {
		t.Errorf("Names = %v", c.Names())
	}
	c.Close()

	// The same tensor name in two files.
	writeTemp(t, dir, "c.safetensors", []TensorSpec{{"x", tensor.F16, []int{1}}}, nil)
	if _, err := OpenDir(dir); !errors.Is(err, ErrDuplicate) || !strings.Contains(err.Error(), `"x"`) {
		t.Errorf("duplicate across files: %v", err)
	}
	// A corrupt file is reported with its path.
	os.WriteFile(filepath.Join(dir, "c.safetensors"), []byte("short"), 0o644)
	if _, err := OpenDir(dir); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "c.safetensors") {
		t.Errorf("corrupt file: %v", err)
	}
	// model.safetensors wins over the others.
	writeTemp(t, dir, SingleFile, []TensorSpec{{"only", tensor.F32, []int{1}}}, nil)
	c, err = OpenDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.Names(), []string{"only"}) {
		t.Errorf("Names = %v", c.Names())
	}
	c.Close()
	if _, err := OpenDir(filepath.Join(dir, "nope")); err == nil {
		t.Error("missing dir: no error")
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing.safetensors")); err == nil {
		t.Error("missing file: no error")
	}
	p := filepath.Join(dir, "empty.safetensors")
	os.WriteFile(p, nil, 0o644)
	if _, err := Open(p); !errors.Is(err, ErrFormat) {
		t.Errorf("empty file: %v", err)
	}
	os.WriteFile(p, raw(`{"t":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)), 0o644)
	if _, err := Open(p); !errors.Is(err, ErrDType) || !strings.Contains(err.Error(), p) {
		t.Errorf("bad file: %v", err)
	}
}

func TestParseBad(t *testing.T) {
	valid := func() []byte {
		p := writeTemp(t, t.TempDir(), "v.safetensors", []TensorSpec{{"w", tensor.F32, []int{2, 2}}}, nil)
		b, _ := os.ReadFile(p)
		return b
	}()
	hugeLen := make([]byte, 16)
	binary.LittleEndian.PutUint64(hugeLen, 1<<62)
	tooLong := make([]byte, 16)
	binary.LittleEndian.PutUint64(tooLong, 9)

	entry := func(name, dtype, shape, offs string) string {
		return fmt.Sprintf(`{%q:{"dtype":%q,"shape":%s,"data_offsets":%s}}`, name, dtype, shape, offs)
	}
	cases := []struct {
		name string
		b    []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrFormat, "8-byte"},
		{"five bytes", []byte{1, 2, 3, 4, 5}, ErrFormat, "8-byte"},
		{"header length beyond file", tooLong, ErrFormat, "header length 9"},
		{"header length huge", hugeLen, ErrFormat, "limit"},
		{"truncated in data", valid[:len(valid)-3], ErrFormat, `"w"`},
		{"truncated in header", valid[:20], ErrFormat, "header length"},
		{"bad JSON", raw(`{"w":{"dtype":`, nil), ErrFormat, "JSON"},
		{"not an object", raw(`[1,2]`, nil), ErrFormat, "object"},
		{"not JSON", raw(`hello`, nil), ErrFormat, "JSON"},
		{"trailing garbage", raw(`{} x`, nil), ErrFormat, "trailing"},
		{"entry not object", raw(`{"w":5}`, nil), ErrFormat, `"w"`},
		{"unknown dtype I64", raw(entry("ids", "I64", "[2]", "[0,16]"), make([]byte, 16)), ErrDType, `"ids" has dtype "I64"`},
		{"unknown dtype F8_E4M3", raw(entry("fp8", "F8_E4M3", "[2]", "[0,2]"), make([]byte, 2)), ErrDType, `"fp8" has dtype "F8_E4M3"`},
		{"made-up dtype", raw(entry("x", "Q9", "[2]", "[0,2]"), make([]byte, 2)), ErrDType, `"Q9"`},
		{"missing dtype", raw(`{"x":{"shape":[1],"data_offsets":[0,4]}}`, make([]byte, 4)), ErrFormat, `"x" has no dtype`},
		{"missing shape", raw(`{"x":{"dtype":"F32","data_offsets":[0,4]}}`, make([]byte, 4)), ErrFormat, `"x" has no shape`},
		{"missing offsets", raw(`{"x":{"dtype":"F32","shape":[1]}}`, make([]byte, 4)), ErrFormat, `"x"`},
		{"three offsets", raw(entry("x", "F32", "[1]", "[0,4,8]"), make([]byte, 8)), ErrFormat, "data_offsets"},
		{"offsets out of range", raw(entry("x", "F32", "[2]", "[0,8]"), make([]byte, 4)), ErrFormat, `"x": data_offsets [0,8] run past`},
		{"offsets backwards", raw(entry("x", "F32", "[0]", "[4,0]"), make([]byte, 4)), ErrFormat, "backwards"},
		{"negative offset", raw(entry("x", "F32", "[1]", "[-4,0]"), make([]byte, 4)), ErrFormat, `"x"`},
		{"shape/size mismatch", raw(entry("x", "F32", "[3]", "[0,8]"), make([]byte, 8)), ErrFormat, `"x": F32 [3] needs 12 bytes`},
		{"negative dim", raw(entry("x", "F32", "[-1]", "[0,4]"), make([]byte, 4)), ErrFormat, `"x"`},
		{"fractional dim", raw(entry("x", "F32", "[1.5]", "[0,4]"), make([]byte, 4)), ErrFormat, `"x"`},
		{"overflowing shape", raw(entry("x", "F32", "[4294967296,4294967296,4294967296]", "[0,4]"), make([]byte, 4)), ErrFormat, `"x"`},
		{"overlap", raw(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, make([]byte, 12)), ErrFormat, "overlap"},
		{"duplicate name", raw(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}`, make([]byte, 8)), ErrDuplicate, `"a"`},
		{"bad metadata", raw(`{"__metadata__":{"n":5}}`, nil), ErrFormat, "__metadata__"},
		{"two metadata", raw(`{"__metadata__":{},"__metadata__":{}}`, nil), ErrFormat, "__metadata__"},
	}
	for _, c := range cases {
		f, err := Parse(c.b)
		if err == nil {
			t.Errorf("%s: no error (names %v)", c.name, f.Names())
			continue
		}
		t.Logf("%-28s %v", c.name, err)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: error %q does not wrap %q", c.name, err, c.want)
		}
		if !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %q does not mention %q", c.name, err, c.msg)
		}
	}

	// Sanity: the valid base file and a few edge-case valid files parse.
	okCases := [][]byte{
		valid,
		raw(`{}`, nil),
		raw(`  {"__metadata__":{"a":"b"}}   `, nil),
		raw(entry("s", "F32", "[]", "[0,4]"), make([]byte, 4)),
		raw(entry("z", "BF16", "[0,5]", "[2,2]"), make([]byte, 4)),
	}
	for i, b := range okCases {
		if _, err := Parse(b); err != nil {
			t.Errorf("valid case %d: %v", i, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	dir := f.TempDir()
	for i, specs := range [][]TensorSpec{
		{{"w", tensor.F32, []int{2, 2}}, {"b", tensor.BF16, []int{3}}},
		{{"h", tensor.F16, []int{1, 2, 1}}},
	} {
		p := filepath.Join(dir, fmt.Sprintf("seed%d.safetensors", i))
		if err := WriteFile(p, specs, map[string]string{"k": "v"}, pattern); err != nil {
			f.Fatal(err)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add(raw(`{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}`, make([]byte, 12)))
	f.Add(raw(`{"x":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		for _, n := range file.Names() {
			tt, ok := file.Tensor(n)
			if !ok {
				t.Fatalf("listed tensor %q not found", n)
			}
			if got, want := len(tt.Data), tt.Elements()*elemBytes(tt.DType); got != want {
				t.Fatalf("tensor %q: %d bytes for %v %s", n, got, tt.Shape, tt.DType)
			}
		}
		_ = file.Metadata()
		if err := file.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
