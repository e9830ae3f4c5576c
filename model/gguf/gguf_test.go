package gguf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

const fixturePath = "../../../shared/fixtures/granite-hybrid-tiny/model.gguf"

func TestFixture(t *testing.T) {
	if _, err := os.Stat(fixturePath); err != nil {
		t.Skipf("fixture not available: %v", err)
	}
	f, err := Open(fixturePath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Version() != 3 {
		t.Errorf("Version = %d", f.Version())
	}
	if got := f.Architecture(); got != "granitehybrid" {
		t.Errorf("Architecture = %q", got)
	}
	if n, ok := f.Uint("granitehybrid.block_count"); !ok || n != 6 {
		t.Errorf("block_count = %d, %v", n, ok)
	}
	if n, ok := f.Int("granitehybrid.block_count"); !ok || n != 6 {
		t.Errorf("block_count as Int = %d, %v", n, ok)
	}
	if kv, ok := f.Ints("granitehybrid.attention.head_count_kv"); !ok || !slices.Equal(kv, []int64{0, 0, 2, 0, 0, 2}) {
		t.Errorf("head_count_kv = %v, %v", kv, ok)
	}
	if v, _ := f.Value("granitehybrid.attention.head_count_kv"); v.Type() != TypeArray || v.ElemType() != TypeInt32 {
		t.Errorf("head_count_kv is %s of %s, want array of int32", v.Type(), v.ElemType())
	}
	toks, ok := f.Strings("tokenizer.ggml.tokens")
	if !ok || len(toks) != 464 {
		t.Errorf("tokens: %d, %v", len(toks), ok)
	}
	if m, ok := f.Strings("tokenizer.ggml.merges"); !ok || len(m) == 0 {
		t.Errorf("merges: %d, %v", len(m), ok)
	}
	if s, ok := f.Float("granitehybrid.attention.scale"); !ok || s != 0.0078125 {
		t.Errorf("attention.scale = %v, %v", s, ok)
	}
	if b, ok := f.Bool("granitehybrid.rope.scaling.finetuned"); !ok || b {
		t.Errorf("rope.scaling.finetuned = %v, %v", b, ok)
	}
	if s, ok := f.String("tokenizer.ggml.pre"); !ok || s != "gpt-2" {
		t.Errorf("tokenizer.ggml.pre = %q", s)
	}
	keys := f.Keys()
	if len(keys) != 38 || keys[0] != "general.architecture" {
		t.Errorf("Keys: %d, first %q", len(keys), keys[0])
	}

	dt, shape, data, err := f.Tensor("blk.0.ssm_a")
	if err != nil || dt != tensor.F32 || !slices.Equal(shape, []int{8, 1}) || len(data) != 32 {
		t.Errorf("blk.0.ssm_a: %v %v %d bytes, %v", dt, shape, len(data), err)
	}
	// ssm_a already holds A = -exp(A_log): every entry is negative.
	for i := 0; i+4 <= len(data); i += 4 {
		if a := math.Float32frombits(binary.LittleEndian.Uint32(data[i:])); !(a < 0) {
			t.Errorf("ssm_a[%d] = %v, want < 0", i/4, a)
		}
	}
	dt, shape, data, err = f.Tensor("token_embd.weight")
	if err != nil || dt != tensor.F32 || !slices.Equal(shape, []int{464, 64}) || len(data) != 464*64*4 {
		t.Errorf("token_embd.weight: %v %v %d bytes, %v", dt, shape, len(data), err)
	}
	ti, ok := f.TensorInfo("token_embd.weight")
	if !ok || !slices.Equal(ti.Dims, []uint64{64, 464}) || ti.Type != GGMLTypeF32 {
		t.Errorf("TensorInfo(token_embd.weight) = %+v", ti)
	}
	ts := f.Tensors()
	if len(ts) != 96 {
		t.Errorf("%d tensors, want 96", len(ts))
	}
	for _, ti := range ts {
		if _, _, _, err := f.Tensor(ti.Name); err != nil {
			t.Errorf("tensor %s: %v", ti.Name, err)
		}
		if ti.Offset%f.Alignment() != 0 {
			t.Errorf("tensor %s: unaligned offset %d", ti.Name, ti.Offset)
		}
	}
	if _, _, _, err := f.Tensor("output.weight"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "output.weight") {
		t.Errorf("missing tensor: %v", err)
	}
}

// fillPattern writes bytes that depend on the tensor and position.
func fillPattern(i int, dst []byte) error {
	for j := range dst {
		dst[j] = byte(i*53 + j*13 + j>>8)
	}
	return nil
}

func TestWriterRoundTrip(t *testing.T) {
	w := NewWriter()
	w.AddString("general.architecture", "granitehybrid")
	w.Add("k.u8", uint8(200))
	w.Add("k.i8", int8(-100))
	w.Add("k.u16", uint16(60000))
	w.Add("k.i16", int16(-30000))
	w.AddUint32("k.u32", 4000000000)
	w.AddInt32("k.i32", -2000000000)
	w.AddFloat32("k.f32", 0.0078125)
	w.AddBool("k.bool", true)
	w.AddBool("k.false", false)
	w.AddString("k.str", "héllo\x00world")
	w.AddString("k.empty", "")
	w.AddUint64("k.u64", math.MaxUint64)
	w.AddInt64("k.i64", math.MinInt64)
	w.AddFloat64("k.f64", math.Pi)
	w.AddStrings("k.strs", []string{"a", "", "Ġthe"})
	w.AddInt32s("k.i32s", []int32{0, 0, 2, -1})
	w.AddUint32s("k.u32s", []uint32{1, math.MaxUint32})
	w.AddFloat32s("k.f32s", []float32{1.5, -2})
	w.Add("k.u8s", []uint8{1, 2, 3})
	w.Add("k.i8s", []int8{-1})
	w.Add("k.u16s", []uint16{7})
	w.Add("k.i16s", []int16{-7})
	w.Add("k.u64s", []uint64{1 << 40})
	w.Add("k.i64s", []int64{-1 << 40})
	w.Add("k.f64s", []float64{0.25})
	w.Add("k.bools", []bool{true, false})
	w.Add("k.emptyarr", []int32{})
	inner1, _ := NewValue([]string{"x", "y"})
	inner2, _ := NewValue([]string{"z"})
	w.Add("k.nested", []Value{inner1, inner2})

	type spec struct {
		name string
		dt   tensor.DType
		ne   []uint64
	}
	specs := []spec{
		{"f32", tensor.F32, []uint64{3, 5}},
		{"f16", tensor.F16, []uint64{7}},
		{"bf16", tensor.BF16, []uint64{4, 3, 2}},
		{"q8", tensor.Q8_0, []uint64{64, 3}},
		{"q4k", tensor.Q4_K, []uint64{512, 2}},
		{"empty", tensor.F32, []uint64{0, 4}},
		{"4d", tensor.F16, []uint64{2, 3, 4, 5}},
	}
	for _, s := range specs {
		w.AddTensor(s.name, s.dt, s.ne, 0)
	}
	if err := w.Err(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "rt.gguf")
	if err := w.WriteFile(p, fillPattern); err != nil {
		t.Fatal(err)
	}

	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	wantKeys := []string{"general.architecture", "k.u8", "k.i8", "k.u16", "k.i16", "k.u32", "k.i32", "k.f32",
		"k.bool", "k.false", "k.str", "k.empty", "k.u64", "k.i64", "k.f64", "k.strs", "k.i32s", "k.u32s",
		"k.f32s", "k.u8s", "k.i8s", "k.u16s", "k.i16s", "k.u64s", "k.i64s", "k.f64s", "k.bools",
		"k.emptyarr", "k.nested"}
	if !slices.Equal(f.Keys(), wantKeys) {
		t.Errorf("Keys = %v", f.Keys())
	}
	wantTypes := map[string]ValueType{"k.u8": TypeUint8, "k.i8": TypeInt8, "k.u16": TypeUint16,
		"k.i16": TypeInt16, "k.u32": TypeUint32, "k.i32": TypeInt32, "k.f32": TypeFloat32,
		"k.bool": TypeBool, "k.str": TypeString, "k.u64": TypeUint64, "k.i64": TypeInt64,
		"k.f64": TypeFloat64, "k.strs": TypeArray}
	for k, want := range wantTypes {
		if v, _ := f.Value(k); v.Type() != want {
			t.Errorf("%s: type %s, want %s", k, v.Type(), want)
		}
	}
	check := func(name string, ok bool) {
		t.Helper()
		if !ok {
			t.Errorf("%s: wrong value", name)
		}
	}
	u, ok := f.Uint("k.u8")
	check("k.u8", ok && u == 200)
	i, ok := f.Int("k.i8")
	check("k.i8", ok && i == -100)
	_, ok = f.Uint("k.i8")
	check("Uint of negative int8 is false", !ok)
	u, ok = f.Uint("k.u16")
	check("k.u16", ok && u == 60000)
	i, ok = f.Int("k.i16")
	check("k.i16", ok && i == -30000)
	u, ok = f.Uint("k.u32")
	check("k.u32", ok && u == 4000000000)
	i, ok = f.Int("k.u32")
	check("Int of uint32", ok && i == 4000000000)
	i, ok = f.Int("k.i32")
	check("k.i32", ok && i == -2000000000)
	u, ok = f.Uint("k.u64")
	check("k.u64", ok && u == math.MaxUint64)
	_, ok = f.Int("k.u64")
	check("Int of huge uint64 is false", !ok)
	i, ok = f.Int("k.i64")
	check("k.i64", ok && i == math.MinInt64)
	fl, ok := f.Float("k.f32")
	check("k.f32", ok && fl == 0.0078125)
	fl, ok = f.Float("k.f64")
	check("k.f64", ok && fl == math.Pi)
	_, ok = f.Float("k.u32")
	check("Float of an integer is false", !ok)
	_, ok = f.Uint("k.f32")
	check("Uint of a float is false", !ok)
	b, ok := f.Bool("k.bool")
	check("k.bool", ok && b)
	b, ok = f.Bool("k.false")
	check("k.false", ok && !b)
	s, ok := f.String("k.str")
	check("k.str", ok && s == "héllo\x00world")
	s, ok = f.String("k.empty")
	check("k.empty", ok && s == "")
	_, ok = f.String("k.u8")
	check("String of an integer is false", !ok)
	_, ok = f.String("missing")
	check("missing key", !ok)
	ss, ok := f.Strings("k.strs")
	check("k.strs", ok && slices.Equal(ss, []string{"a", "", "Ġthe"}))
	is, ok := f.Ints("k.i32s")
	check("k.i32s", ok && slices.Equal(is, []int64{0, 0, 2, -1}))
	is, ok = f.Ints("k.u32s")
	check("k.u32s", ok && slices.Equal(is, []int64{1, math.MaxUint32}))
	fs, ok := f.Floats("k.f32s")
	check("k.f32s", ok && slices.Equal(fs, []float64{1.5, -2}))
	is, ok = f.Ints("k.u8s")
	check("k.u8s", ok && slices.Equal(is, []int64{1, 2, 3}))
	is, ok = f.Ints("k.i8s")
	check("k.i8s", ok && slices.Equal(is, []int64{-1}))
	is, ok = f.Ints("k.u16s")
	check("k.u16s", ok && slices.Equal(is, []int64{7}))
	is, ok = f.Ints("k.i16s")
	check("k.i16s", ok && slices.Equal(is, []int64{-7}))
	is, ok = f.Ints("k.u64s")
	check("k.u64s", ok && slices.Equal(is, []int64{1 << 40}))
	is, ok = f.Ints("k.i64s")
	check("k.i64s", ok && slices.Equal(is, []int64{-1 << 40}))
	fs, ok = f.Floats("k.f64s")
	check("k.f64s", ok && slices.Equal(fs, []float64{0.25}))
	_, ok = f.Ints("k.f32s")
	check("Ints of floats is false", !ok)
	_, ok = f.Strings("k.i32s")
	check("Strings of ints is false", !ok)
	v, _ := f.Value("k.bools")
	arr, ok := v.Array()
	if bb, _ := arr[0].Bool(); !ok || len(arr) != 2 || !bb {
		t.Errorf("k.bools = %v", v)
	}
	v, _ = f.Value("k.emptyarr")
	if v.Type() != TypeArray || v.ElemType() != TypeInt32 || v.Len() != 0 {
		t.Errorf("k.emptyarr = %v", v)
	}
	v, _ = f.Value("k.nested")
	arr, ok = v.Array()
	if !ok || v.ElemType() != TypeArray || len(arr) != 2 {
		t.Fatalf("k.nested = %v", v)
	}
	if a0, _ := arr[0].Strings(); !slices.Equal(a0, []string{"x", "y"}) {
		t.Errorf("k.nested[0] = %v", arr[0])
	}
	if a1, _ := arr[1].Strings(); !slices.Equal(a1, []string{"z"}) {
		t.Errorf("k.nested[1] = %v", arr[1])
	}
	if s := v.String(); !strings.Contains(s, `"x"`) {
		t.Errorf("nested String() = %s", s)
	}

	if len(f.Tensors()) != len(specs) {
		t.Fatalf("%d tensors", len(f.Tensors()))
	}
	if f.DataOffset()%32 != 0 {
		t.Errorf("data offset %d not aligned", f.DataOffset())
	}
	for idx, sp := range specs {
		ti := f.Tensors()[idx]
		if ti.Name != sp.name || !slices.Equal(ti.Dims, sp.ne) || ti.Offset%32 != 0 {
			t.Errorf("tensor %d: %+v", idx, ti)
		}
		dt, shape, data, err := f.Tensor(sp.name)
		if err != nil {
			t.Errorf("%s: %v", sp.name, err)
			continue
		}
		wantShape := make([]int, len(sp.ne))
		for j, d := range sp.ne {
			wantShape[len(sp.ne)-1-j] = int(d)
		}
		rows := 1
		for _, d := range sp.ne[1:] {
			rows *= int(d)
		}
		rb, _ := sp.dt.RowBytes(int(sp.ne[0]))
		want := make([]byte, rows*rb)
		fillPattern(idx, want)
		if dt != sp.dt || !slices.Equal(shape, wantShape) || !bytes.Equal(data, want) {
			t.Errorf("%s: got %v %v %d bytes (data equal %v)", sp.name, dt, shape, len(data), bytes.Equal(data, want))
		}
	}
}

// TestWriterQuantizedData writes real Q8_0/Q4_K rows and checks they dequantize.
func TestWriterQuantizedData(t *testing.T) {
	x := make([]float32, 256)
	for i := range x {
		x[i] = float32(math.Sin(float64(i) * 0.1))
	}
	w := NewWriter()
	w.AddTensor("q8", tensor.Q8_0, []uint64{256}, 8*34)
	w.AddTensor("q4", tensor.Q4_K, []uint64{256}, 144)
	p := filepath.Join(t.TempDir(), "q.gguf")
	err := w.WriteFile(p, func(i int, dst []byte) error {
		if i == 0 {
			tensor.QuantizeQ8_0(x, dst)
		} else {
			tensor.QuantizeQ4_K(x, dst)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, c := range []struct {
		name string
		tol  float64
	}{{"q8", 0.01}, {"q4", 0.1}} {
		dt, _, data, err := f.Tensor(c.name)
		if err != nil {
			t.Fatal(err)
		}
		y := make([]float32, 256)
		tensor.DequantizeRow(dt, data, y)
		for i := range x {
			if math.Abs(float64(x[i]-y[i])) > c.tol {
				t.Fatalf("%s[%d] = %v, want %v", c.name, i, y[i], x[i])
			}
		}
	}
}

func TestWriterErrors(t *testing.T) {
	cases := []struct {
		name string
		do   func(w *Writer)
		msg  string
	}{
		{"duplicate key", func(w *Writer) { w.AddUint32("a", 1); w.AddString("a", "x") }, `"a"`},
		{"go int", func(w *Writer) { w.Add("n", 5) }, `"n"`},
		{"zero Value", func(w *Writer) { w.Add("z", Value{}) }, `"z"`},
		{"nested non-array", func(w *Writer) {
			v, _ := NewValue(uint8(1))
			w.Add("nest", []Value{v})
		}, `"nest"`},
		{"duplicate tensor", func(w *Writer) {
			w.AddTensor("t", tensor.F32, []uint64{1}, 4)
			w.AddTensor("t", tensor.F32, []uint64{1}, 4)
		}, `"t"`},
		{"wrong size", func(w *Writer) { w.AddTensor("s", tensor.F32, []uint64{2}, 4) }, `"s"`},
		{"partial block", func(w *Writer) { w.AddTensor("q", tensor.Q8_0, []uint64{33}, 0) }, `"q"`},
		{"no dims", func(w *Writer) { w.AddTensor("d", tensor.F32, nil, 0) }, `"d"`},
		{"five dims", func(w *Writer) { w.AddTensor("d5", tensor.F32, []uint64{1, 1, 1, 1, 1}, 0) }, `"d5"`},
		{"bad dtype", func(w *Writer) { w.AddTensor("x", tensor.DType(77), []uint64{1}, 0) }, `"x"`},
		{"overflow", func(w *Writer) { w.AddTensor("o", tensor.F32, []uint64{1 << 40, 1 << 40}, 0) }, `"o"`},
		{"bad alignment", func(w *Writer) { w.AddUint32(AlignmentKey, 48) }, AlignmentKey},
	}
	for _, c := range cases {
		dir := t.TempDir()
		w := NewWriter()
		c.do(w)
		err := w.WriteFile(filepath.Join(dir, "x.gguf"), nil)
		if !errors.Is(err, ErrWriter) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: error %v, want ErrWriter mentioning %s", c.name, err, c.msg)
		}
		if ents, _ := os.ReadDir(dir); len(ents) != 0 {
			t.Errorf("%s: left files behind", c.name)
		}
	}

	// A failing fill leaves nothing behind and names the tensor.
	dir := t.TempDir()
	w := NewWriter()
	w.AddTensor("a", tensor.F32, []uint64{4}, 16)
	err := w.WriteFile(filepath.Join(dir, "x.gguf"), func(int, []byte) error { return errors.New("boom") })
	if err == nil || !strings.Contains(err.Error(), `tensor "a": fill: boom`) {
		t.Errorf("fill error: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("failed fill left files behind: %v", ents)
	}
}

func TestCustomAlignment(t *testing.T) {
	w := NewWriter()
	w.AddUint32(AlignmentKey, 64)
	w.AddTensor("a", tensor.F32, []uint64{3}, 0)
	w.AddTensor("b", tensor.F32, []uint64{5}, 0)
	p := filepath.Join(t.TempDir(), "a.gguf")
	if err := w.WriteFile(p, fillPattern); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Alignment() != 64 || f.DataOffset()%64 != 0 {
		t.Errorf("alignment %d, data offset %d", f.Alignment(), f.DataOffset())
	}
	if ti, _ := f.TensorInfo("b"); ti.Offset != 64 {
		t.Errorf("b at offset %d, want 64", ti.Offset)
	}
	_, _, data, err := f.Tensor("b")
	want := make([]byte, 20)
	fillPattern(1, want)
	if err != nil || !bytes.Equal(data, want) {
		t.Errorf("b: %v", err)
	}
}

// raw builds GGUF bytes by hand for the hostile-input tests.
type raw struct{ b []byte }

func (r *raw) u32(v uint32) *raw { r.b = binary.LittleEndian.AppendUint32(r.b, v); return r }
func (r *raw) u64(v uint64) *raw { r.b = binary.LittleEndian.AppendUint64(r.b, v); return r }
func (r *raw) str(s string) *raw { r.u64(uint64(len(s))); r.b = append(r.b, s...); return r }
func (r *raw) bytes(b ...byte) *raw {
	r.b = append(r.b, b...)
	return r
}

// header starts a v3 file with the given counts.
func header(nTensors, nKV uint64) *raw {
	r := &raw{}
	r.bytes('G', 'G', 'U', 'F').u32(3).u64(nTensors).u64(nKV)
	return r
}

// withTensor appends one tensor info and pads the data section to hold dataLen
// bytes.
func oneTensor(name string, ne []uint64, typ GGMLType, off uint64, dataLen int) []byte {
	r := header(1, 0).str(name).u32(uint32(len(ne)))
	for _, d := range ne {
		r.u64(d)
	}
	r.u32(uint32(typ)).u64(off)
	for len(r.b)%32 != 0 {
		r.bytes(0)
	}
	r.bytes(make([]byte, dataLen)...)
	return r.b
}

func validSmall(t testing.TB) []byte {
	t.Helper()
	w := NewWriter()
	w.AddString("general.architecture", "test")
	w.AddStrings("tokens", []string{"a", "b"})
	w.AddInt32s("kv", []int32{0, 2})
	w.AddFloat32("eps", 1e-5)
	w.AddTensor("w", tensor.F32, []uint64{4, 2}, 0)
	w.AddTensor("q", tensor.Q8_0, []uint64{32}, 0)
	p := filepath.Join(t.TempDir(), "v.gguf")
	if err := w.WriteFile(p, fillPattern); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseBad(t *testing.T) {
	valid := validSmall(t)
	if _, err := Parse(valid); err != nil {
		t.Fatalf("valid file: %v", err)
	}
	withVersion := func(v uint32) []byte {
		b := slices.Clone(valid)
		binary.LittleEndian.PutUint32(b[4:], v)
		return b
	}
	cases := []struct {
		name string
		b    []byte
		want error
		msg  string
	}{
		{"empty", nil, ErrFormat, "shorter"},
		{"bad magic", append([]byte("GGUX"), valid[4:]...), ErrFormat, "magic"},
		{"truncated header", valid[:20], ErrFormat, "shorter"},
		{"truncated in metadata", valid[:60], ErrFormat, ""},
		{"truncated in data", valid[:len(valid)-40], ErrFormat, "run past"},
		{"version 1", withVersion(1), ErrUnsupported, "version 1"},
		{"version 4", withVersion(4), ErrUnsupported, "version 4"},
		{"big-endian", withVersion(3 << 24), ErrUnsupported, "big-endian"},
		{"tensor count huge", header(1<<60, 0).b, ErrFormat, "tensor count"},
		{"kv count huge", header(0, 1<<62).b, ErrFormat, "kv count"},
		{"key length beyond file", header(0, 1).u64(1 << 40).bytes(make([]byte, 8)...).b, ErrFormat, "string length"},
		{"string value beyond file", header(0, 1).str("k").u32(uint32(TypeString)).u64(1 << 50).bytes(make([]byte, 8)...).b, ErrFormat, `"k"`},
		{"array count huge", header(0, 1).str("arr").u32(uint32(TypeArray)).u32(uint32(TypeUint32)).u64(1 << 61).b, ErrFormat, `"arr"`},
		{"string array count huge", header(0, 1).str("toks").u32(uint32(TypeArray)).u32(uint32(TypeString)).u64(1 << 40).bytes(make([]byte, 16)...).b, ErrFormat, `"toks"`},
		{"unknown value type", header(0, 1).str("k").u32(13).bytes(make([]byte, 8)...).b, ErrFormat, "unknown value type 13"},
		{"unknown array type", header(0, 1).str("k").u32(uint32(TypeArray)).u32(99).u64(0).b, ErrFormat, "unknown value type 99"},
		{"duplicate key", header(0, 2).str("k").u32(uint32(TypeUint8)).bytes(1).str("k").u32(uint32(TypeUint8)).bytes(2).b, ErrFormat, `"k" appears twice`},
		{"bad alignment", header(0, 1).str(AlignmentKey).u32(uint32(TypeUint32)).u32(24).b, ErrFormat, AlignmentKey},
		{"alignment string", header(0, 1).str(AlignmentKey).u32(uint32(TypeString)).str("32").b, ErrFormat, AlignmentKey},
		{"tensor offset beyond file", oneTensor("w", []uint64{4}, GGMLTypeF32, 1<<20, 16), ErrFormat, `"w"`},
		{"tensor end beyond file", oneTensor("w", []uint64{8}, GGMLTypeF32, 0, 16), ErrFormat, `tensor "w": 32 bytes`},
		{"tensor offset unaligned", oneTensor("w", []uint64{1}, GGMLTypeF32, 4, 64), ErrFormat, "multiple of the alignment"},
		{"zero dims", oneTensor("w", []uint64{}, GGMLTypeF32, 0, 64), ErrFormat, `"w": 0 dimensions`},
		{"five dims", oneTensor("w", []uint64{1, 1, 1, 1, 1}, GGMLTypeF32, 0, 64), ErrFormat, `"w": 5 dimensions`},
		{"q8 partial block", oneTensor("q", []uint64{33}, GGMLTypeQ8_0, 0, 64), ErrFormat, `"q"`},
		{"dims overflow", oneTensor("big", []uint64{1 << 40, 1 << 40}, GGMLTypeF32, 0, 64), ErrFormat, `"big"`},
		{"huge dim", oneTensor("big", []uint64{math.MaxUint64}, GGMLTypeF32, 0, 64), ErrFormat, `"big"`},
		{"tensor name beyond file", header(1, 0).u64(1 << 33).bytes(make([]byte, 40)...).b, ErrFormat, "string length"},
	}
	// Duplicate tensor name.
	dup := header(2, 0)
	for range 2 {
		dup.str("t").u32(1).u64(1).u32(0).u64(0)
	}
	for len(dup.b)%32 != 0 {
		dup.bytes(0)
	}
	dup.bytes(make([]byte, 32)...)
	cases = append(cases, struct {
		name string
		b    []byte
		want error
		msg  string
	}{"duplicate tensor", dup.b, ErrFormat, `"t" appears twice`})
	// Arrays nested too deep.
	deep := header(0, 1).str("deep").u32(uint32(TypeArray))
	for range 20 {
		deep.u32(uint32(TypeArray)).u64(1)
	}
	deep.u32(uint32(TypeUint8)).u64(0)
	cases = append(cases, struct {
		name string
		b    []byte
		want error
		msg  string
	}{"nested too deep", deep.b, ErrFormat, "nested"})

	if f, err := Parse(withVersion(2)); err != nil || f.Version() != 2 {
		t.Errorf("version 2: %v", err)
	}
	for _, c := range cases {
		f, err := Parse(c.b)
		if err == nil {
			t.Errorf("%s: no error (keys %v)", c.name, f.Keys())
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
}

// TestQuantizedTensorTypes reads one tensor of every quantized type the engine
// computes with.
func TestQuantizedTensorTypes(t *testing.T) {
	for _, g := range SupportedTypes() {
		d, _ := g.DType()
		if !d.Quantized() {
			continue
		}
		values, size, _ := g.blockLayout()
		b := oneTensor("blk.0.ffn_down.weight", []uint64{2 * values, 3}, g, 0, int(6*size))
		f, err := Parse(b)
		if err != nil {
			t.Errorf("%v: Parse: %v", g, err)
			continue
		}
		dt, shape, data, err := f.Tensor("blk.0.ffn_down.weight")
		if err != nil || dt != d || !slices.Equal(shape, []int{3, 2 * int(values)}) || len(data) != int(6*size) {
			t.Errorf("%v: Tensor = %v %v %d bytes, %v", g, dt, shape, len(data), err)
		}
	}
}

func TestUnsupportedTensorTypes(t *testing.T) {
	for _, c := range []struct {
		typ  GGMLType
		ne   []uint64
		size int
		name string
	}{
		{GGMLTypeQ8_1, []uint64{32}, 36, "Q8_1"},
		{GGMLTypeTQ1_0, []uint64{256}, 0, "TQ1_0"},
		{GGMLTypeTQ2_0, []uint64{256}, 0, "TQ2_0"},
		{GGMLTypeI32, []uint64{4}, 16, "I32"},
		{GGMLType(99), []uint64{4}, 0, "GGMLType(99)"},
	} {
		b := oneTensor("blk.0.ffn_down.weight", c.ne, c.typ, 0, 256)
		f, err := Parse(b)
		if err != nil {
			t.Errorf("%s: Parse: %v", c.name, err)
			continue
		}
		_, _, _, err = f.Tensor("blk.0.ffn_down.weight")
		if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "blk.0.ffn_down.weight") || !strings.Contains(err.Error(), c.name) {
			t.Errorf("%s: Tensor error %v", c.name, err)
		}
		if c.typ.String() != c.name {
			t.Errorf("String() = %q, want %q", c.typ.String(), c.name)
		}
		// The tensor's size is still checked when its layout is known.
		if c.size > 0 {
			short := oneTensor("blk.0.ffn_down.weight", c.ne, c.typ, 0, 0)
			if _, err := Parse(append(short, make([]byte, c.size-1)...)); !errors.Is(err, ErrFormat) {
				t.Errorf("%s: one byte short: %v", c.name, err)
			}
		}
	}
}

// TestTruncations parses every prefix of a valid file: none may panic, and every
// prefix that cuts into the header or a tensor's data must fail.
func TestTruncations(t *testing.T) {
	valid := validSmall(t)
	f, err := Parse(valid)
	if err != nil {
		t.Fatal(err)
	}
	var need uint64
	for _, ti := range f.Tensors() {
		_, _, data, _ := f.Tensor(ti.Name)
		need = max(need, f.DataOffset()+ti.Offset+uint64(len(data)))
	}
	for n := range len(valid) {
		_, err := Parse(valid[:n])
		if uint64(n) < need && err == nil {
			t.Errorf("prefix of %d bytes (need %d) parsed", n, need)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "missing.gguf")); err == nil {
		t.Error("missing file: no error")
	}
	p := filepath.Join(dir, "small.gguf")
	os.WriteFile(p, []byte("GGUF"), 0o644)
	if _, err := Open(p); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), p) {
		t.Errorf("short file: %v", err)
	}
	os.WriteFile(p, append([]byte("GGML"), make([]byte, 40)...), 0o644)
	if _, err := Open(p); !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), p) {
		t.Errorf("bad magic: %v", err)
	}
	os.WriteFile(p, validSmall(t), 0o644)
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, _, err := f.Tensor("w"); err == nil {
		t.Error("Tensor after Close: no error")
	}
}

func TestValueGetters(t *testing.T) {
	var zero Value
	if _, ok := zero.Uint(); ok {
		t.Error("zero Value Uint")
	}
	if _, ok := zero.Array(); ok {
		t.Error("zero Value Array")
	}
	if zero.String() != "<invalid>" {
		t.Errorf("zero String = %q", zero.String())
	}
	v, _ := NewValue([]uint64{math.MaxUint64})
	if _, ok := v.Ints(); ok {
		t.Error("Ints of huge uint64 array")
	}
	v, _ = NewValue(make([]int32, 20))
	if s := v.String(); !strings.HasPrefix(s, "[int32 x 20: 0, 0") || !strings.HasSuffix(s, "…]") {
		t.Errorf("String = %q", s)
	}
	v, _ = NewValue(int16(-3))
	if i, ok := v.Int(); !ok || i != -3 {
		t.Errorf("int16 Int = %d %v", i, ok)
	}
	if _, err := NewValue(struct{}{}); !errors.Is(err, ErrWriter) {
		t.Errorf("NewValue(struct): %v", err)
	}
	for _, ty := range []ValueType{TypeUint8, TypeArray, TypeFloat64, ValueType(40)} {
		if ty.String() == "" {
			t.Errorf("empty name for %d", ty)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(validSmall(f))
	f.Add(oneTensor("w", []uint64{4, 2}, GGMLTypeF32, 0, 32))
	f.Add(oneTensor("q", []uint64{256}, GGMLTypeQ4_K, 0, 144))
	f.Add(header(0, 1).str("deep").u32(uint32(TypeArray)).u32(uint32(TypeArray)).u64(1).u32(uint32(TypeString)).u64(1).str("x").b)
	f.Add(header(0, 1).str(AlignmentKey).u32(uint32(TypeUint32)).u32(64).b)
	if b, err := os.ReadFile(fixturePath); err == nil {
		f.Add(b[:4096]) // the fixture's header, cut short
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		file, err := Parse(b)
		if err != nil {
			return
		}
		for _, k := range file.Keys() {
			v, ok := file.Value(k)
			if !ok {
				t.Fatalf("listed key %q missing", k)
			}
			_ = v.String()
			v.Array()
			file.Uint(k)
			file.Int(k)
			file.Float(k)
			file.Strings(k)
			file.Ints(k)
			file.Floats(k)
		}
		for _, ti := range file.Tensors() {
			dt, shape, data, err := file.Tensor(ti.Name)
			if err != nil {
				if !errors.Is(err, ErrUnsupported) {
					t.Fatalf("tensor %q: %v", ti.Name, err)
				}
				continue
			}
			n := 1
			for _, d := range shape[:len(shape)-1] {
				n *= d
			}
			rb, err := dt.RowBytes(shape[len(shape)-1])
			if err != nil || n*rb != len(data) {
				t.Fatalf("tensor %q: %v %v has %d bytes (%v)", ti.Name, dt, shape, len(data), err)
			}
		}
	})
}

// TestEngineTypesConsistent checks that every ggml type the engine computes
// with maps to an element type and back, with the same block layout in both
// packages.
func TestEngineTypesConsistent(t *testing.T) {
	for _, g := range SupportedTypes() {
		d, ok := g.DType()
		if !ok {
			t.Fatalf("%v: no DType", g)
		}
		if back, ok := ggmlTypeOf(d); !ok || back != g {
			t.Errorf("%v -> %v -> %v", g, d, back)
		}
		values, size, ok := g.blockLayout()
		if !ok || int(values) != d.BlockValues() || int(size) != d.BlockBytes() {
			t.Errorf("%v: ggml layout %d/%d, tensor layout %d/%d", g, values, size, d.BlockValues(), d.BlockBytes())
		}
		if d.String() != g.String() {
			t.Errorf("names differ: %q vs %q", d, g)
		}
	}
	for _, d := range tensor.QuantizedDTypes() {
		if _, ok := ggmlTypeOf(d); !ok {
			t.Errorf("%v has no ggml type", d)
		}
	}
}

// TestTrimmedDims parses llama-quantize's output, whose 1-D ssm_norm.weight
// (ne {128}) stands for the converter's {128, 1}: the reader reports the
// dimensions as written.
func TestTrimmedDims(t *testing.T) {
	f, err := Open("testdata/granite-tiny-q4_k_m.gguf")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dt, shape, data, err := f.Tensor("blk.0.ssm_norm.weight")
	if err != nil || dt != tensor.F32 || !slices.Equal(shape, []int{128}) || len(data) != 512 {
		t.Fatalf("ssm_norm: %v %v %d bytes, %v", dt, shape, len(data), err)
	}
	if !tensor.SameShape(shape, []int{1, 128}) {
		t.Fatal("SameShape rejects the trimmed shape")
	}
	dt, shape, _, err = f.Tensor("blk.0.ffn_down_exps.weight")
	if err != nil || dt != tensor.Q5_0 || !slices.Equal(shape, []int{8, 64, 32}) {
		t.Fatalf("ffn_down_exps: %v %v, %v", dt, shape, err)
	}
}
