package cuda

import (
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

func TestPackArgs(t *testing.T) {
	got, err := packArgs(nil, DevPtr(0x7f0000001000), int32(-2), uint32(7), float32(1.5), 3, int64(-1), uint64(1)<<40)
	if err != nil {
		t.Fatal(err)
	}
	want := []uint64{0x7f0000001000, 0xfffffffe, 7, uint64(math.Float32bits(1.5)), 3, math.MaxUint64, 1 << 40}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("packArgs = %#x, want %#x", got, want)
	}
	if ArgInt32(got[1]) != -2 || ArgFloat32(got[3]) != 1.5 || ArgPtr(got[0]) != 0x7f0000001000 {
		t.Fatal("readers do not invert packArgs")
	}
	for _, bad := range []any{1 << 40, "x", 1.5, []int{1}} {
		if _, err := packArgs(nil, bad); err == nil {
			t.Errorf("packArgs(%T %v) accepted", bad, bad)
		}
	}
}

func TestSearchDirs(t *testing.T) {
	env := map[string]string{
		LibsEnv:           "/opt/libs:/x/libcublas.so.13",
		"LD_LIBRARY_PATH": "/ld1:/opt/libs",
	}
	glob := func(p string) ([]string, error) {
		if strings.HasPrefix(p, "/usr/local/lib/python3*") {
			return []string{"/usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib", "/usr/local/lib/python3.12/dist-packages/nvidia/cu13/lib"}, nil
		}
		return nil, nil
	}
	dirs := searchDirs(func(k string) string { return env[k] }, glob, func() []string { return []string{"/ldcache"} })
	idx := func(d string) int { return slices_index(dirs, d) }
	for _, d := range []string{"/opt/libs", "/x", "/ld1", "/usr/local/cuda/lib64", "/ldcache", "/usr/local/lib/python3.12/dist-packages/nvidia/cu13/lib"} {
		if idx(d) < 0 {
			t.Fatalf("%s not searched: %v", d, dirs)
		}
	}
	if !(idx("/opt/libs") < idx("/ld1") && idx("/ld1") < idx("/usr/local/cuda/lib64") && idx("/usr/local/cuda/lib64") < idx("/ldcache")) {
		t.Fatalf("search order wrong: %v", dirs)
	}
	if idx("/usr/local/lib/python3.12/dist-packages/nvidia/cu13/lib") > idx("/usr/local/lib/python3.11/dist-packages/nvidia/cublas/lib") {
		t.Fatalf("newer Python's folder should come first: %v", dirs)
	}
	if n := strings.Count(strings.Join(dirs, "\n"), "/opt/libs"); n != 1 {
		t.Fatalf("/opt/libs listed %d times", n)
	}
	files := explicitFiles(func(k string) string { return env[k] })
	exists := func(p string) bool { return p == "/ld1/libcublas.so.12" || p == "/opt/libs/libcublas.so.13" }
	c := candidates(cublasNames, dirs, files, exists, true)
	if c[0] != "/x/libcublas.so.13" || c[1] != "/opt/libs/libcublas.so.13" || c[2] != "/ld1/libcublas.so.12" || c[len(c)-1] != "libcublas.so" {
		t.Fatalf("candidates = %v", c)
	}
}

func slices_index(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

func TestNotFoundIsOneClearLine(t *testing.T) {
	err := notFound("NVIDIA driver libcuda.so.1", []string{"libcuda.so.1"}, errors.New("cannot open shared object file"), []string{"/usr/local/cuda/lib64"})
	if !errors.Is(err, ErrNoLibrary) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), LibsEnv) {
		t.Fatalf("error %q: want one line wrapping ErrNoLibrary and naming %s", err, LibsEnv)
	}
}

func TestOpenWithoutGPU(t *testing.T) {
	// In CI (no tag, or no driver) Open fails with one clear line; with a GPU it works.
	d, err := Open(0)
	if err != nil {
		if strings.Contains(err.Error(), "\n") {
			t.Fatalf("multi-line error: %q", err)
		}
		if !Built && !errors.Is(err, ErrNotBuilt) {
			t.Fatalf("untagged build: %v, want ErrNotBuilt", err)
		}
		t.Logf("no GPU: %v", err)
		return
	}
	defer d.Close()
	t.Logf("GPU: %+v", d.Info())
}

func TestErrorIs(t *testing.T) {
	if !errors.Is(&Error{Call: "cuMemAlloc", Code: 2}, ErrOutOfMemory) {
		t.Error("CUDA_ERROR_OUT_OF_MEMORY is not ErrOutOfMemory")
	}
	if !errors.Is(&Error{Call: "cublasGemmEx", Code: 3, Name: "CUBLAS_STATUS_ALLOC_FAILED"}, ErrOutOfMemory) {
		t.Error("CUBLAS_STATUS_ALLOC_FAILED is not ErrOutOfMemory")
	}
	if !errors.Is(&Error{Call: "cuDeviceGet", Code: 100}, ErrNoDevice) {
		t.Error("CUDA_ERROR_NO_DEVICE is not ErrNoDevice")
	}
}

// TestFakeDevice runs the device API through the fake: memory, copies, a
// GEMM against a hand-computed product, bounds checks, and out-of-memory.
func TestFakeDevice(t *testing.T) {
	f := NewFake(1<<20, map[string]FakeKernel{"scale": func(m *FakeMem, _, _ [3]uint32, a []uint64) error {
		v, err := m.Float32s(ArgPtr(a[0]), int(ArgInt32(a[1])))
		if err != nil {
			return err
		}
		for i := range v {
			v[i] *= ArgFloat32(a[2])
		}
		return nil
	}})
	d, err := OpenFake(f)
	if err != nil {
		t.Fatal(err)
	}
	s, err := d.NewStream()
	if err != nil {
		t.Fatal(err)
	}
	h, err := d.AllocHost(64)
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.Alloc(64)
	if err != nil {
		t.Fatal(err)
	}
	copy(h.Float32s(), []float32{1, 2, 3, 4})
	if err := s.CopyToDevice(p, h, 0, 16); err != nil {
		t.Fatal(err)
	}
	m, _ := d.LoadModule([]byte("// ptx"))
	k, err := m.Func("scale")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Func("missing"); err == nil {
		t.Fatal("missing kernel found")
	}
	if err := s.Launch(k, [3]uint32{1, 1, 1}, [3]uint32{32, 1, 1}, 0, p, 4, float32(2)); err != nil {
		t.Fatal(err)
	}
	// GEMM: row-major A [2,2] (bf16) · Bᵀ, B [1,2] (bf16) → C [2,1] f32.
	bf := func(v ...float32) []byte {
		var b []byte
		for _, x := range v {
			u := tensor.F32ToBF16(x)
			b = append(b, byte(u), byte(u>>8))
		}
		return b
	}
	a, _ := d.Alloc(8)
	bm, _ := d.Alloc(4)
	c, _ := d.Alloc(8)
	d.CopyToDevice(a, bf(1, 2, 3, 4))
	d.CopyToDevice(bm, bf(10, 100))
	blas, err := d.NewBLAS(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := blas.GemmRowMajor(2, 1, 2, 1, a, R16BF, 2, bm, R16BF, 2, 0, c, R32F, 1); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 8)
	if err := d.CopyFromDevice(out, c); err != nil {
		t.Fatal(err)
	}
	got := []float32{math.Float32frombits(uint32(out[0]) | uint32(out[1])<<8 | uint32(out[2])<<16 | uint32(out[3])<<24),
		math.Float32frombits(uint32(out[4]) | uint32(out[5])<<8 | uint32(out[6])<<16 | uint32(out[7])<<24)}
	if got[0] != 210 || got[1] != 430 {
		t.Fatalf("GEMM = %v, want [210 430]", got)
	}
	if err := s.CopyFromDevice(h, 0, p, 16); err != nil {
		t.Fatal(err)
	}
	if v := h.Float32s()[:4]; !reflect.DeepEqual(v, []float32{2, 4, 6, 8}) {
		t.Fatalf("after the kernel: %v", v)
	}
	if err := s.CopyToDevice(p, h, 0, 128); err == nil {
		t.Fatal("copy past the host buffer accepted")
	}
	if err := d.CopyToDevice(p.Add(60), make([]byte, 8)); err == nil {
		t.Fatal("copy past the allocation accepted")
	}
	if _, err := d.Alloc(2 << 20); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("oversized allocation: %v, want ErrOutOfMemory", err)
	}
	for _, q := range []DevPtr{p, a, bm, c} {
		if err := d.Free(q); err != nil {
			t.Fatal(err)
		}
	}
	if f.Used() != 0 {
		t.Fatalf("%d bytes leaked", f.Used())
	}
	h.Free()
}
