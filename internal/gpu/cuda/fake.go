package cuda

import (
	"fmt"
	"math"
	"sync"
	"time"
	"unsafe"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// FakeKernel is the Go twin of a kernel: it does for the whole grid what the
// kernel does, reading and writing device memory through m. args are the
// packed 8-byte slots (decode them with ArgPtr, ArgInt32, ArgFloat32).
type FakeKernel func(m *FakeMem, grid, block [3]uint32, args []uint64) error

// Fake is an in-memory driver: device memory is host memory behind synthetic
// addresses (so a kernel twin that strays outside an allocation fails instead
// of corrupting anything), streams run their work at once, kernels run their
// registered Go twins and GEMMs run a plain reference. It exists so that CI,
// which has no GPU, tests everything above the driver: argument packing,
// buffer sizes and offsets, the order of launches.
type Fake struct {
	mu      sync.Mutex
	total   uint64
	used    uint64
	next    DevPtr
	allocs  map[DevPtr][]byte
	host    map[unsafe.Pointer][]byte
	kernels map[string]FakeKernel
	funcs   []string
	events  map[uintptr]time.Time
	handles uintptr
	// Launches counts kernel launches (and "gemm" calls) by name.
	Launches map[string]int
	// NoBatched makes batched GEMMs fail as unsupported.
	NoBatched    bool
	failLaunches error // guarded by mu; see FailLaunches
}

// NewFake returns a fake GPU with total bytes of memory and the given kernel twins.
func NewFake(total uint64, kernels map[string]FakeKernel) *Fake {
	return &Fake{total: total, next: 1 << 32, allocs: map[DevPtr][]byte{}, host: map[unsafe.Pointer][]byte{},
		kernels: kernels, events: map[uintptr]time.Time{}, Launches: map[string]int{}}
}

// OpenFake opens f as GPU 0.
func OpenFake(f *Fake) (*Device, error) {
	d, err := open(f, 0)
	if err != nil {
		return nil, err
	}
	d.info.DriverLibrary, d.info.CUBLASLibrary = "fake", "fake"
	return d, nil
}

// FailLaunches makes every kernel launch from now on fail with err (nil: work
// again), as a GPU whose context was lost would: tests of fault handling.
func (f *Fake) FailLaunches(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failLaunches = err
}

// Used returns the device bytes allocated now.
func (f *Fake) Used() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.used
}

// FakeMem resolves device addresses for kernel twins.
type FakeMem struct{ f *Fake }

// Bytes returns the n bytes at p; they must lie inside one allocation.
func (m *FakeMem) Bytes(p DevPtr, n int) ([]byte, error) { return m.f.resolve(p, n) }

// Float32s returns n float32 values at p.
func (m *FakeMem) Float32s(p DevPtr, n int) ([]float32, error) {
	b, err := m.f.resolve(p, 4*n)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*float32)(unsafe.Pointer(&b[0])), n), nil
}

// Uint16s returns n uint16 values (bf16 bits) at p.
func (m *FakeMem) Uint16s(p DevPtr, n int) ([]uint16, error) {
	b, err := m.f.resolve(p, 2*n)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*uint16)(unsafe.Pointer(&b[0])), n), nil
}

// Int32s returns n int32 values at p.
func (m *FakeMem) Int32s(p DevPtr, n int) ([]int32, error) {
	b, err := m.f.resolve(p, 4*n)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*int32)(unsafe.Pointer(&b[0])), n), nil
}

// Uint64s returns n uint64 values at p.
func (m *FakeMem) Uint64s(p DevPtr, n int) ([]uint64, error) {
	b, err := m.f.resolve(p, 8*n)
	if err != nil || n == 0 {
		return nil, err
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), n), nil
}

func (f *Fake) resolve(p DevPtr, n int) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n < 0 {
		return nil, fmt.Errorf("fake cuda: negative length %d", n)
	}
	for base, b := range f.allocs {
		if p >= base && p < base+DevPtr(len(b)) {
			off := int(p - base)
			if off+n > len(b) {
				return nil, fmt.Errorf("fake cuda: %d bytes at %#x overrun a %d-byte allocation at %#x", n, p, len(b), base)
			}
			return b[off : off+n : off+n], nil
		}
	}
	if n == 0 {
		return nil, nil
	}
	return nil, fmt.Errorf("fake cuda: address %#x (%d bytes) is not allocated", p, n)
}

func (f *Fake) deviceCount() (int, error)            { return 1, nil }
func (f *Fake) deviceGet(int) (int32, error)         { return 0, nil }
func (f *Fake) deviceName(int32) (string, error)     { return "Fake GPU (Go twins)", nil }
func (f *Fake) deviceTotalMem(int32) (uint64, error) { return f.total, nil }
func (f *Fake) versions() (int, int)                 { return 13000, 130000 }
func (f *Fake) deviceAttr(_ int32, attr int) (int, error) {
	switch attr {
	case attrMultiprocessors:
		return 4, nil
	case attrCCMajor:
		return 9, nil
	}
	return 0, nil
}
func (f *Fake) ctxRetain(int32) (uintptr, error) { return 1, nil }
func (f *Fake) ctxRelease(int32) error           { return nil }
func (f *Fake) ctxSetCurrent(uintptr) error      { return nil }

func (f *Fake) memInfo() (uint64, uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total - f.used, f.total, nil
}

func (f *Fake) memAlloc(n uint64) (DevPtr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.used+n > f.total {
		return 0, &Error{Call: "cuMemAlloc", Code: 2, Name: "CUDA_ERROR_OUT_OF_MEMORY"}
	}
	p := f.next
	f.allocs[p] = make([]byte, n)
	f.used += n
	f.next += DevPtr((n+255)/256*256 + 4096) // a gap: strays fail
	return p, nil
}

func (f *Fake) memFree(p DevPtr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.allocs[p]
	if !ok {
		return &Error{Call: "cuMemFree", Code: 1, Name: "CUDA_ERROR_INVALID_VALUE"}
	}
	f.used -= uint64(len(b))
	delete(f.allocs, p)
	return nil
}

func (f *Fake) hostAlloc(n uint64) (unsafe.Pointer, error) {
	b := make([]byte, n)
	p := unsafe.Pointer(&b[0])
	f.mu.Lock()
	f.host[p] = b
	f.mu.Unlock()
	return p, nil
}

func (f *Fake) hostFree(p unsafe.Pointer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.host, p)
	return nil
}

func (f *Fake) copyHtoD(dst DevPtr, src unsafe.Pointer, n uint64, _ uintptr) error {
	b, err := f.resolve(dst, int(n))
	if err != nil {
		return err
	}
	copy(b, unsafe.Slice((*byte)(src), n))
	return nil
}

func (f *Fake) copyDtoH(dst unsafe.Pointer, src DevPtr, n uint64, _ uintptr) error {
	b, err := f.resolve(src, int(n))
	if err != nil {
		return err
	}
	copy(unsafe.Slice((*byte)(dst), n), b)
	return nil
}

func (f *Fake) copyDtoD(dst, src DevPtr, n uint64, _ uintptr) error {
	s, err := f.resolve(src, int(n))
	if err != nil {
		return err
	}
	d, err := f.resolve(dst, int(n))
	if err != nil {
		return err
	}
	copy(d, s)
	return nil
}

func (f *Fake) memsetD8(dst DevPtr, v byte, n uint64, _ uintptr) error {
	b, err := f.resolve(dst, int(n))
	if err != nil {
		return err
	}
	for i := range b {
		b[i] = v
	}
	return nil
}

func (f *Fake) handle() uintptr {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handles++
	return f.handles
}

func (f *Fake) streamCreate() (uintptr, error)     { return f.handle(), nil }
func (f *Fake) streamDestroy(uintptr) error        { return nil }
func (f *Fake) streamSync(uintptr) error           { return nil }
func (f *Fake) streamWaitEvent(_, _ uintptr) error { return nil }
func (f *Fake) eventCreate() (uintptr, error)      { return f.handle(), nil }
func (f *Fake) eventDestroy(uintptr) error         { return nil }
func (f *Fake) eventSync(uintptr) error            { return nil }
func (f *Fake) eventRecord(e, _ uintptr) error {
	f.mu.Lock()
	f.events[e] = time.Now()
	f.mu.Unlock()
	return nil
}
func (f *Fake) eventElapsed(a, b uintptr) (float32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ta, ok1 := f.events[a]
	tb, ok2 := f.events[b]
	if !ok1 || !ok2 {
		return 0, &Error{Call: "cuEventElapsedTime", Code: 600, Name: "CUDA_ERROR_NOT_READY"}
	}
	return float32(tb.Sub(ta).Seconds() * 1e3), nil
}

func (f *Fake) moduleLoad(ptx []byte) (uintptr, error) {
	if len(ptx) == 0 || ptx[len(ptx)-1] != 0 {
		return 0, &Error{Call: "cuModuleLoadDataEx", Code: 218, Name: "CUDA_ERROR_INVALID_PTX"}
	}
	return f.handle(), nil
}
func (f *Fake) moduleUnload(uintptr) error { return nil }
func (f *Fake) moduleFunc(_ uintptr, name string) (uintptr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.kernels[name]; !ok {
		return 0, &Error{Call: "cuModuleGetFunction", Code: 500, Name: "CUDA_ERROR_NOT_FOUND"}
	}
	f.funcs = append(f.funcs, name)
	return uintptr(len(f.funcs)), nil
}

func (f *Fake) launch(fn uintptr, grid, block [3]uint32, _ uint32, _ uintptr, args []uint64) error {
	f.mu.Lock()
	if fn == 0 || int(fn) > len(f.funcs) {
		f.mu.Unlock()
		return &Error{Call: "cuLaunchKernel", Code: 400, Name: "CUDA_ERROR_INVALID_HANDLE"}
	}
	name := f.funcs[fn-1]
	k := f.kernels[name]
	f.Launches[name]++
	fail := f.failLaunches
	f.mu.Unlock()
	if fail != nil {
		return fail
	}
	if block[0]*block[1]*block[2] > 1024 {
		return &Error{Call: "cuLaunchKernel", Code: 1, Name: "CUDA_ERROR_INVALID_VALUE"}
	}
	return k(&FakeMem{f}, grid, block, append([]uint64(nil), args...))
}

func (f *Fake) blasCreate() (uintptr, error)     { return f.handle(), nil }
func (f *Fake) blasDestroy(uintptr) error        { return nil }
func (f *Fake) blasSetStream(_, _ uintptr) error { return nil }

// gemm is the reference twin of cublasGemmEx (column-major, float32 accumulation).
func (f *Fake) gemm(_ uintptr, ta, tb bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
	b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int) error {
	f.mu.Lock()
	f.Launches["gemm"]++
	f.mu.Unlock()
	// Extents (column-major): op(A) is m x k, op(B) is k x n, C is m x n.
	arows, acols := m, k
	if ta {
		arows, acols = k, m
	}
	brows, bcols := k, n
	if tb {
		brows, bcols = n, k
	}
	if lda < arows || ldb < brows || ldc < m {
		return &Error{Call: "cublasGemmEx", Code: 7, Name: "CUBLAS_STATUS_INVALID_VALUE"}
	}
	mem := &FakeMem{f}
	load := func(p DevPtr, t DataType, ld, rows, cols int) (func(i int) float32, error) {
		n := ld*(cols-1) + rows
		switch t {
		case R32F:
			v, err := mem.Float32s(p, n)
			return func(i int) float32 { return v[i] }, err
		case R16BF:
			v, err := mem.Uint16s(p, n)
			return func(i int) float32 { return math.Float32frombits(uint32(v[i]) << 16) }, err
		}
		return nil, &Error{Call: "cublasGemmEx", Code: 15, Name: "CUBLAS_STATUS_NOT_SUPPORTED"}
	}
	A, err := load(a, at, lda, arows, acols)
	if err != nil {
		return err
	}
	B, err := load(b, bt, ldb, brows, bcols)
	if err != nil {
		return err
	}
	cn := ldc*(n-1) + m
	var cf []float32
	var ch []uint16
	switch ct {
	case R32F:
		cf, err = mem.Float32s(c, cn)
	case R16BF:
		ch, err = mem.Uint16s(c, cn)
	default:
		return &Error{Call: "cublasGemmEx", Code: 15, Name: "CUBLAS_STATUS_NOT_SUPPORTED"}
	}
	if err != nil {
		return err
	}
	for j := 0; j < n; j++ {
		for i := 0; i < m; i++ {
			var s float32
			for l := 0; l < k; l++ {
				ai := i + l*lda
				if ta {
					ai = l + i*lda
				}
				bi := l + j*ldb
				if tb {
					bi = j + l*ldb
				}
				s += A(ai) * B(bi)
			}
			ci := i + j*ldc
			if cf != nil {
				old := float32(0)
				if *beta != 0 {
					old = *beta * cf[ci]
				}
				cf[ci] = *alpha*s + old
			} else {
				old := float32(0)
				if *beta != 0 {
					old = *beta * math.Float32frombits(uint32(ch[ci])<<16)
				}
				ch[ci] = tensor.F32ToBF16(*alpha*s + old)
			}
		}
	}
	return nil
}

// gemmBatched runs each product through gemm (the reference twin).
func (f *Fake) gemmBatched(h uintptr, ta, tb bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
	b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int, count int) error {
	if f.NoBatched {
		return &Error{Call: "cublasGemmBatchedEx", Code: 15, Name: "CUBLAS_STATUS_NOT_SUPPORTED"}
	}
	mem := &FakeMem{f}
	as, err := mem.Uint64s(a, count)
	if err != nil {
		return err
	}
	bs, err := mem.Uint64s(b, count)
	if err != nil {
		return err
	}
	cs, err := mem.Uint64s(c, count)
	if err != nil {
		return err
	}
	f.mu.Lock()
	f.Launches["gemm_batched"]++
	f.mu.Unlock()
	for i := 0; i < count; i++ {
		if err := f.gemm(h, ta, tb, m, n, k, alpha, DevPtr(as[i]), at, lda, DevPtr(bs[i]), bt, ldb, beta, DevPtr(cs[i]), ct, ldc); err != nil {
			return err
		}
	}
	return nil
}
