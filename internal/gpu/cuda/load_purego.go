//go:build cuda

package cuda

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"

	"github.com/ebitengine/purego"
)

// Built reports whether this binary can reach real GPUs (the "cuda" build tag).
const Built = true

// cuResult and cublasStatus are the libraries' status codes.
type (
	cuResult     int32
	cublasStatus int32
)

// realDriver calls libcuda and libcublas through purego. Function pointers are
// filled by bind; names with versions are the ones the CUDA 12/13 headers map
// the plain names to.
type realDriver struct {
	cuInit                    func(flags uint32) cuResult
	cuDriverGetVersion        func(v *int32) cuResult
	cuDeviceGetCount          func(n *int32) cuResult
	cuDeviceGet               func(dev *int32, ordinal int32) cuResult
	cuDeviceGetName           func(name *byte, n int32, dev int32) cuResult
	cuDeviceGetAttribute      func(v *int32, attr int32, dev int32) cuResult
	cuDeviceTotalMem          func(b *uint64, dev int32) cuResult
	cuDevicePrimaryCtxRetain  func(ctx *uintptr, dev int32) cuResult
	cuDevicePrimaryCtxRelease func(dev int32) cuResult
	cuCtxSetCurrent           func(ctx uintptr) cuResult
	cuMemGetInfo              func(free, total *uint64) cuResult
	cuMemAlloc                func(p *uint64, n uint64) cuResult
	cuMemFree                 func(p uint64) cuResult
	cuMemAllocHost            func(p *unsafe.Pointer, n uint64) cuResult
	cuMemFreeHost             func(p unsafe.Pointer) cuResult
	cuMemcpyHtoDAsync         func(dst uint64, src unsafe.Pointer, n uint64, s uintptr) cuResult
	cuMemcpyDtoHAsync         func(dst unsafe.Pointer, src uint64, n uint64, s uintptr) cuResult
	cuMemcpyDtoDAsync         func(dst, src uint64, n uint64, s uintptr) cuResult
	cuMemcpyHtoD              func(dst uint64, src unsafe.Pointer, n uint64) cuResult
	cuMemcpyDtoH              func(dst unsafe.Pointer, src uint64, n uint64) cuResult
	cuMemsetD8Async           func(dst uint64, v uint8, n uint64, s uintptr) cuResult
	cuStreamCreate            func(s *uintptr, flags uint32) cuResult
	cuStreamDestroy           func(s uintptr) cuResult
	cuStreamSynchronize       func(s uintptr) cuResult
	cuStreamWaitEvent         func(s, e uintptr, flags uint32) cuResult
	cuEventCreate             func(e *uintptr, flags uint32) cuResult
	cuEventDestroy            func(e uintptr) cuResult
	cuEventRecord             func(e, s uintptr) cuResult
	cuEventSynchronize        func(e uintptr) cuResult
	cuEventElapsedTime        func(ms *float32, start, end uintptr) cuResult
	cuModuleLoadDataEx        func(m *uintptr, img unsafe.Pointer, n uint32, opts *int32, vals *uintptr) cuResult
	cuModuleUnload            func(m uintptr) cuResult
	cuModuleGetFunction       func(f *uintptr, m uintptr, name string) cuResult
	cuLaunchKernel            func(f uintptr, gx, gy, gz, bx, by, bz, shared uint32, s uintptr, params *unsafe.Pointer, extra *unsafe.Pointer) cuResult
	cuGetErrorName            func(r cuResult, s **byte) cuResult

	blasOnce            sync.Once
	blasErr             error
	blasLib             string
	blasVer             int
	cublasCreate        func(h *uintptr) cublasStatus
	cublasDestroy       func(h uintptr) cublasStatus
	cublasSetStream     func(h, s uintptr) cublasStatus
	cublasGetVersion    func(h uintptr, v *int32) cublasStatus
	cublasGemmBatchedEx func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, a uint64, at int32, lda int32,
		b uint64, bt int32, ldb int32, beta unsafe.Pointer, c uint64, ct int32, ldc int32, count int32, compute int32, algo int32) cublasStatus
	cublasGemmEx func(h uintptr, ta, tb int32, m, n, k int32, alpha unsafe.Pointer, a uint64, at int32, lda int32,
		b uint64, bt int32, ldb int32, beta unsafe.Pointer, c uint64, ct int32, ldc int32, compute int32, algo int32) cublasStatus

	plan libraryPlan
}

var (
	loadOnce sync.Once
	loaded   *realDriver
	loadLibs [2]string
	loadErr  error
)

// loadDriver opens libcuda (once per process) and binds the driver API; cuBLAS
// is opened at the first BLAS handle.
func loadDriver() (driver, [2]string, error) {
	loadOnce.Do(func() {
		d := &realDriver{plan: planLibraries()}
		h, path, err := openFirst(d.plan.driver)
		if err != nil {
			loadErr = fmt.Errorf("%w (is the NVIDIA driver installed and the GPU visible to this container?)",
				notFound("NVIDIA driver libcuda.so.1", d.plan.driver, err, d.plan.dirs))
			return
		}
		if err := d.bindDriver(h); err != nil {
			loadErr = fmt.Errorf("cuda: %s: %w", path, err)
			return
		}
		if r := d.cuInit(0); r != 0 {
			loadErr = d.err("cuInit", r)
			return
		}
		loaded, loadLibs[0] = d, path
	})
	if loadErr != nil {
		return nil, [2]string{}, loadErr
	}
	if err := loaded.openBLAS(); err != nil {
		return nil, [2]string{}, err
	}
	loadLibs[1] = loaded.blasLib
	return loaded, loadLibs, nil
}

func openFirst(paths []string) (uintptr, string, error) {
	var last error
	for _, p := range paths {
		h, err := purego.Dlopen(p, purego.RTLD_NOW|purego.RTLD_GLOBAL)
		if err == nil {
			return h, p, nil
		}
		last = err
	}
	if last == nil {
		last = fmt.Errorf("no candidate files")
	}
	return 0, "", last
}

// bind registers fn (a pointer to a func field) as the first of names the library has.
func bind(h uintptr, fn any, names ...string) error {
	for _, n := range names {
		if sym, err := purego.Dlsym(h, n); err == nil && sym != 0 {
			purego.RegisterFunc(fn, sym)
			return nil
		}
	}
	return fmt.Errorf("symbol %s not found", names[0])
}

func (d *realDriver) bindDriver(h uintptr) error {
	for _, b := range []struct {
		fn    any
		names []string
	}{
		{&d.cuInit, []string{"cuInit"}},
		{&d.cuDriverGetVersion, []string{"cuDriverGetVersion"}},
		{&d.cuDeviceGetCount, []string{"cuDeviceGetCount"}},
		{&d.cuDeviceGet, []string{"cuDeviceGet"}},
		{&d.cuDeviceGetName, []string{"cuDeviceGetName"}},
		{&d.cuDeviceGetAttribute, []string{"cuDeviceGetAttribute"}},
		{&d.cuDeviceTotalMem, []string{"cuDeviceTotalMem_v2"}},
		{&d.cuDevicePrimaryCtxRetain, []string{"cuDevicePrimaryCtxRetain"}},
		{&d.cuDevicePrimaryCtxRelease, []string{"cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease"}},
		{&d.cuCtxSetCurrent, []string{"cuCtxSetCurrent"}},
		{&d.cuMemGetInfo, []string{"cuMemGetInfo_v2"}},
		{&d.cuMemAlloc, []string{"cuMemAlloc_v2"}},
		{&d.cuMemFree, []string{"cuMemFree_v2"}},
		{&d.cuMemAllocHost, []string{"cuMemAllocHost_v2"}},
		{&d.cuMemFreeHost, []string{"cuMemFreeHost"}},
		{&d.cuMemcpyHtoDAsync, []string{"cuMemcpyHtoDAsync_v2"}},
		{&d.cuMemcpyDtoHAsync, []string{"cuMemcpyDtoHAsync_v2"}},
		{&d.cuMemcpyDtoDAsync, []string{"cuMemcpyDtoDAsync_v2"}},
		{&d.cuMemcpyHtoD, []string{"cuMemcpyHtoD_v2"}},
		{&d.cuMemcpyDtoH, []string{"cuMemcpyDtoH_v2"}},
		{&d.cuMemsetD8Async, []string{"cuMemsetD8Async"}},
		{&d.cuStreamCreate, []string{"cuStreamCreate"}},
		{&d.cuStreamDestroy, []string{"cuStreamDestroy_v2"}},
		{&d.cuStreamSynchronize, []string{"cuStreamSynchronize"}},
		{&d.cuStreamWaitEvent, []string{"cuStreamWaitEvent"}},
		{&d.cuEventCreate, []string{"cuEventCreate"}},
		{&d.cuEventDestroy, []string{"cuEventDestroy_v2"}},
		{&d.cuEventRecord, []string{"cuEventRecord"}},
		{&d.cuEventSynchronize, []string{"cuEventSynchronize"}},
		{&d.cuEventElapsedTime, []string{"cuEventElapsedTime_v2", "cuEventElapsedTime"}},
		{&d.cuModuleLoadDataEx, []string{"cuModuleLoadDataEx"}},
		{&d.cuModuleUnload, []string{"cuModuleUnload"}},
		{&d.cuModuleGetFunction, []string{"cuModuleGetFunction"}},
		{&d.cuLaunchKernel, []string{"cuLaunchKernel"}},
		{&d.cuGetErrorName, []string{"cuGetErrorName"}},
	} {
		if err := bind(h, b.fn, b.names...); err != nil {
			return err
		}
	}
	return nil
}

func (d *realDriver) openBLAS() error {
	d.blasOnce.Do(func() {
		// cublasLt first: cuBLAS links it, and a folder outside the loader's path
		// (a pip wheel) is found only once the library is already loaded.
		if _, _, err := openFirst(d.plan.cublasLt); err != nil {
			d.blasErr = notFound("cuBLASLt (libcublasLt.so.13 or .12)", d.plan.cublasLt, err, d.plan.dirs)
			return
		}
		h, path, err := openFirst(d.plan.cublas)
		if err != nil {
			d.blasErr = notFound("cuBLAS (libcublas.so.13 or .12)", d.plan.cublas, err, d.plan.dirs)
			return
		}
		for _, b := range []struct {
			fn   any
			name string
		}{
			{&d.cublasCreate, "cublasCreate_v2"}, {&d.cublasDestroy, "cublasDestroy_v2"},
			{&d.cublasSetStream, "cublasSetStream_v2"}, {&d.cublasGetVersion, "cublasGetVersion_v2"},
			{&d.cublasGemmEx, "cublasGemmEx"}, {&d.cublasGemmBatchedEx, "cublasGemmBatchedEx"},
		} {
			if err := bind(h, b.fn, b.name); err != nil {
				d.blasErr = fmt.Errorf("cuda: %s: %w", path, err)
				return
			}
		}
		d.blasLib = path
	})
	return d.blasErr
}

func (d *realDriver) err(call string, r cuResult) error {
	if r == 0 {
		return nil
	}
	e := &Error{Call: call, Code: int(r)}
	var s *byte
	if d.cuGetErrorName != nil && d.cuGetErrorName(r, &s) == 0 && s != nil {
		e.Name = goString(s)
	}
	return e
}

func blasErr(call string, r cublasStatus) error {
	if r == 0 {
		return nil
	}
	names := map[cublasStatus]string{1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
		8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
		14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED", 16: "CUBLAS_STATUS_LICENSE_ERROR"}
	return &Error{Call: call, Code: int(r), Name: names[r]}
}

// goString copies a NUL-terminated C string.
func goString(p *byte) string {
	var b []byte
	for q := unsafe.Pointer(p); *(*byte)(q) != 0; q = unsafe.Add(q, 1) {
		b = append(b, *(*byte)(q))
	}
	return string(b)
}

func (d *realDriver) deviceCount() (int, error) {
	var n int32
	if r := d.cuDeviceGetCount(&n); r != 0 {
		return 0, d.err("cuDeviceGetCount", r)
	}
	return int(n), nil
}

func (d *realDriver) deviceGet(ordinal int) (int32, error) {
	var dev int32
	return dev, d.err("cuDeviceGet", d.cuDeviceGet(&dev, int32(ordinal)))
}

func (d *realDriver) deviceName(dev int32) (string, error) {
	buf := make([]byte, 256)
	if r := d.cuDeviceGetName(&buf[0], int32(len(buf)), dev); r != 0 {
		return "", d.err("cuDeviceGetName", r)
	}
	for i, c := range buf {
		if c == 0 {
			return string(buf[:i]), nil
		}
	}
	return string(buf), nil
}

func (d *realDriver) deviceAttr(dev int32, attr int) (int, error) {
	var v int32
	return int(v), d.err("cuDeviceGetAttribute", d.cuDeviceGetAttribute(&v, int32(attr), dev))
}

func (d *realDriver) deviceTotalMem(dev int32) (uint64, error) {
	var b uint64
	return b, d.err("cuDeviceTotalMem", d.cuDeviceTotalMem(&b, dev))
}

func (d *realDriver) versions() (int, int) {
	var v int32
	d.cuDriverGetVersion(&v)
	return int(v), d.blasVer
}

func (d *realDriver) ctxRetain(dev int32) (uintptr, error) {
	var c uintptr
	return c, d.err("cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain(&c, dev))
}

func (d *realDriver) ctxRelease(dev int32) error {
	return d.err("cuDevicePrimaryCtxRelease", d.cuDevicePrimaryCtxRelease(dev))
}

func (d *realDriver) ctxSetCurrent(c uintptr) error {
	return d.err("cuCtxSetCurrent", d.cuCtxSetCurrent(c))
}

func (d *realDriver) memInfo() (uint64, uint64, error) {
	var f, t uint64
	return f, t, d.err("cuMemGetInfo", d.cuMemGetInfo(&f, &t))
}

func (d *realDriver) memAlloc(n uint64) (DevPtr, error) {
	var p uint64
	return DevPtr(p), d.err("cuMemAlloc", d.cuMemAlloc(&p, n))
}

func (d *realDriver) memFree(p DevPtr) error { return d.err("cuMemFree", d.cuMemFree(uint64(p))) }

func (d *realDriver) hostAlloc(n uint64) (unsafe.Pointer, error) {
	var p unsafe.Pointer
	return p, d.err("cuMemAllocHost", d.cuMemAllocHost(&p, n))
}

func (d *realDriver) hostFree(p unsafe.Pointer) error {
	return d.err("cuMemFreeHost", d.cuMemFreeHost(p))
}

func (d *realDriver) copyHtoD(dst DevPtr, src unsafe.Pointer, n uint64, s uintptr) error {
	if s == 0 {
		return d.err("cuMemcpyHtoD", d.cuMemcpyHtoD(uint64(dst), src, n))
	}
	return d.err("cuMemcpyHtoDAsync", d.cuMemcpyHtoDAsync(uint64(dst), src, n, s))
}

func (d *realDriver) copyDtoH(dst unsafe.Pointer, src DevPtr, n uint64, s uintptr) error {
	if s == 0 {
		return d.err("cuMemcpyDtoH", d.cuMemcpyDtoH(dst, uint64(src), n))
	}
	return d.err("cuMemcpyDtoHAsync", d.cuMemcpyDtoHAsync(dst, uint64(src), n, s))
}

func (d *realDriver) copyDtoD(dst, src DevPtr, n uint64, s uintptr) error {
	return d.err("cuMemcpyDtoDAsync", d.cuMemcpyDtoDAsync(uint64(dst), uint64(src), n, s))
}

func (d *realDriver) memsetD8(dst DevPtr, v byte, n uint64, s uintptr) error {
	return d.err("cuMemsetD8Async", d.cuMemsetD8Async(uint64(dst), v, n, s))
}

func (d *realDriver) streamCreate() (uintptr, error) {
	var s uintptr
	return s, d.err("cuStreamCreate", d.cuStreamCreate(&s, 1)) // CU_STREAM_NON_BLOCKING
}

func (d *realDriver) streamDestroy(s uintptr) error {
	return d.err("cuStreamDestroy", d.cuStreamDestroy(s))
}
func (d *realDriver) streamSync(s uintptr) error {
	return d.err("cuStreamSynchronize", d.cuStreamSynchronize(s))
}

func (d *realDriver) streamWaitEvent(s, e uintptr) error {
	return d.err("cuStreamWaitEvent", d.cuStreamWaitEvent(s, e, 0))
}

func (d *realDriver) eventCreate() (uintptr, error) {
	var e uintptr
	return e, d.err("cuEventCreate", d.cuEventCreate(&e, 0))
}

func (d *realDriver) eventDestroy(e uintptr) error {
	return d.err("cuEventDestroy", d.cuEventDestroy(e))
}
func (d *realDriver) eventRecord(e, s uintptr) error {
	return d.err("cuEventRecord", d.cuEventRecord(e, s))
}
func (d *realDriver) eventSync(e uintptr) error {
	return d.err("cuEventSynchronize", d.cuEventSynchronize(e))
}
func (d *realDriver) eventElapsed(a, b uintptr) (float32, error) {
	var ms float32
	return ms, d.err("cuEventElapsedTime", d.cuEventElapsedTime(&ms, a, b))
}

func (d *realDriver) moduleLoad(ptx []byte) (uintptr, error) {
	// JIT error log: CU_JIT_ERROR_LOG_BUFFER (5) and its size (6).
	logBuf := make([]byte, 16<<10)
	opts := []int32{5, 6}
	vals := []uintptr{uintptr(unsafe.Pointer(&logBuf[0])), uintptr(len(logBuf))}
	var m uintptr
	r := d.cuModuleLoadDataEx(&m, unsafe.Pointer(&ptx[0]), uint32(len(opts)), &opts[0], &vals[0])
	runtime.KeepAlive(ptx)
	runtime.KeepAlive(logBuf)
	if r != 0 {
		err := d.err("cuModuleLoadDataEx", r)
		n := 0
		for n < len(logBuf) && logBuf[n] != 0 {
			n++
		}
		if n > 0 {
			err = fmt.Errorf("%w: JIT log: %s", err, logBuf[:n])
		}
		return 0, err
	}
	return m, nil
}

func (d *realDriver) moduleUnload(m uintptr) error {
	return d.err("cuModuleUnload", d.cuModuleUnload(m))
}

func (d *realDriver) moduleFunc(m uintptr, name string) (uintptr, error) {
	var f uintptr
	return f, d.err("cuModuleGetFunction", d.cuModuleGetFunction(&f, m, name))
}

func (d *realDriver) launch(f uintptr, grid, block [3]uint32, shared uint32, s uintptr, args []uint64) error {
	// kernelParams: one pointer per argument, into a heap copy of the slots.
	slots := append([]uint64(nil), args...)
	ptrs := make([]unsafe.Pointer, len(slots)+1)
	for i := range slots {
		ptrs[i] = unsafe.Pointer(&slots[i])
	}
	r := d.cuLaunchKernel(f, grid[0], grid[1], grid[2], block[0], block[1], block[2], shared, s, &ptrs[0], nil)
	runtime.KeepAlive(slots)
	runtime.KeepAlive(ptrs)
	return d.err("cuLaunchKernel", r)
}

func (d *realDriver) blasCreate() (uintptr, error) {
	var h uintptr
	if r := d.cublasCreate(&h); r != 0 {
		return 0, blasErr("cublasCreate", r)
	}
	var v int32
	if d.cublasGetVersion(h, &v) == 0 {
		d.blasVer = int(v)
	}
	return h, nil
}

func (d *realDriver) blasDestroy(h uintptr) error {
	return blasErr("cublasDestroy", d.cublasDestroy(h))
}
func (d *realDriver) blasSetStream(h, s uintptr) error {
	return blasErr("cublasSetStream", d.cublasSetStream(h, s))
}

func (d *realDriver) gemm(h uintptr, ta, tb bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
	b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int) error {
	op := func(t bool) int32 {
		if t {
			return 1 // CUBLAS_OP_T
		}
		return 0
	}
	const compute32F, algoDefault = 68, -1
	r := d.cublasGemmEx(h, op(ta), op(tb), int32(m), int32(n), int32(k), unsafe.Pointer(alpha), uint64(a), int32(at), int32(lda),
		uint64(b), int32(bt), int32(ldb), unsafe.Pointer(beta), uint64(c), int32(ct), int32(ldc), compute32F, algoDefault)
	return blasErr("cublasGemmEx", r)
}

func (d *realDriver) gemmBatched(h uintptr, ta, tb bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
	b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int, count int) error {
	op := func(t bool) int32 {
		if t {
			return 1
		}
		return 0
	}
	const compute32F, algoDefault = 68, -1
	r := d.cublasGemmBatchedEx(h, op(ta), op(tb), int32(m), int32(n), int32(k), unsafe.Pointer(alpha), uint64(a), int32(at), int32(lda),
		uint64(b), int32(bt), int32(ldb), unsafe.Pointer(beta), uint64(c), int32(ct), int32(ldc), int32(count), compute32F, algoDefault)
	return blasErr("cublasGemmBatchedEx", r)
}
