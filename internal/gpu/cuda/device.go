package cuda

import (
	"fmt"
	"runtime"
	"sync"
	"unsafe"
)

// Info describes a GPU.
type Info struct {
	Ordinal         int
	Name            string
	TotalBytes      uint64
	Multiprocessors int
	ComputeMajor    int
	ComputeMinor    int
	L2Bytes         int
	MemBusWidthBits int
	MemClockKHz     int
	DriverVersion   int // e.g. 13000 for CUDA 13.0
	CUBLASVersion   int // e.g. 130000; 0 before cuBLAS is opened
	DriverLibrary   string
	CUBLASLibrary   string
	IsFake          bool
}

// Device is one GPU with its primary context. It is safe for concurrent use;
// the streams, events, modules and BLAS handles made from it belong to one
// goroutine each unless their docs say otherwise.
type Device struct {
	drv  driver
	dev  int32
	ctx  uintptr
	info Info

	mu     sync.Mutex
	closed bool
}

// Open opens GPU ordinal (0 for the first) through the real libraries.
func Open(ordinal int) (*Device, error) {
	drv, libs, err := loadDriver()
	if err != nil {
		return nil, err
	}
	d, err := open(drv, ordinal)
	if err != nil {
		return nil, err
	}
	d.info.DriverLibrary, d.info.CUBLASLibrary = libs[0], libs[1]
	return d, nil
}

func open(drv driver, ordinal int) (*Device, error) {
	n, err := drv.deviceCount()
	if err != nil {
		return nil, fmt.Errorf("cuda: initialise driver: %w", err)
	}
	if ordinal < 0 || ordinal >= n {
		return nil, fmt.Errorf("%w: cuda:%d requested, the driver sees %d GPU(s)", ErrNoDevice, ordinal, n)
	}
	dev, err := drv.deviceGet(ordinal)
	if err != nil {
		return nil, err
	}
	d := &Device{drv: drv, dev: dev, info: Info{Ordinal: ordinal}}
	if d.info.Name, err = drv.deviceName(dev); err != nil {
		return nil, err
	}
	if d.info.TotalBytes, err = drv.deviceTotalMem(dev); err != nil {
		return nil, err
	}
	for _, a := range []struct {
		attr int
		dst  *int
	}{
		{attrMultiprocessors, &d.info.Multiprocessors}, {attrCCMajor, &d.info.ComputeMajor}, {attrCCMinor, &d.info.ComputeMinor},
		{attrL2Bytes, &d.info.L2Bytes}, {attrMemBusWidth, &d.info.MemBusWidthBits}, {attrMemClockKHz, &d.info.MemClockKHz},
	} {
		if *a.dst, err = drv.deviceAttr(dev, a.attr); err != nil {
			return nil, err
		}
	}
	if d.ctx, err = drv.ctxRetain(dev); err != nil {
		return nil, err
	}
	d.info.DriverVersion, d.info.CUBLASVersion = drv.versions()
	_, d.info.IsFake = drv.(*Fake)
	return d, nil
}

// Info returns the device's description.
func (d *Device) Info() Info {
	i := d.info
	_, i.CUBLASVersion = d.drv.versions()
	return i
}

// do runs fn on a locked OS thread with the device's context current.
func (d *Device) do(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := d.drv.ctxSetCurrent(d.ctx); err != nil {
		return err
	}
	return fn()
}

// Close releases the primary context. Everything made from the device must be
// freed first.
func (d *Device) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	return d.drv.ctxRelease(d.dev)
}

// MemInfo returns the device's free and total memory in bytes.
func (d *Device) MemInfo() (free, total uint64, err error) {
	err = d.do(func() error {
		var e error
		free, total, e = d.drv.memInfo()
		return e
	})
	return
}

// Alloc allocates n bytes of device memory (256-byte aligned).
func (d *Device) Alloc(n int) (DevPtr, error) {
	if n <= 0 {
		return 0, fmt.Errorf("cuda: allocate %d bytes", n)
	}
	var p DevPtr
	err := d.do(func() (e error) { p, e = d.drv.memAlloc(uint64(n)); return })
	if err != nil {
		return 0, fmt.Errorf("cuda: allocate %d bytes: %w", n, err)
	}
	return p, nil
}

// Free frees device memory from Alloc (0 is ignored). It waits for work using it.
func (d *Device) Free(p DevPtr) error {
	if p == 0 {
		return nil
	}
	return d.do(func() error { return d.drv.memFree(p) })
}

// CopyToDevice copies src into device memory at dst, synchronously.
func (d *Device) CopyToDevice(dst DevPtr, src []byte) error {
	if len(src) == 0 {
		return nil
	}
	return d.do(func() error {
		err := d.drv.copyHtoD(dst, unsafe.Pointer(&src[0]), uint64(len(src)), 0)
		runtime.KeepAlive(src)
		return err
	})
}

// CopyFromDevice copies device memory at src into dst, synchronously.
func (d *Device) CopyFromDevice(dst []byte, src DevPtr) error {
	if len(dst) == 0 {
		return nil
	}
	return d.do(func() error {
		err := d.drv.copyDtoH(unsafe.Pointer(&dst[0]), src, uint64(len(dst)), 0)
		runtime.KeepAlive(dst)
		return err
	})
}

// HostBuf is page-locked host memory: copies from and to it run asynchronously
// and at full PCIe speed. Bytes aliases it until Free.
type HostBuf struct {
	d     *Device
	p     unsafe.Pointer
	Bytes []byte
}

// AllocHost allocates n bytes of page-locked host memory.
func (d *Device) AllocHost(n int) (*HostBuf, error) {
	if n <= 0 {
		return nil, fmt.Errorf("cuda: allocate %d host bytes", n)
	}
	var p unsafe.Pointer
	if err := d.do(func() (e error) { p, e = d.drv.hostAlloc(uint64(n)); return }); err != nil {
		return nil, fmt.Errorf("cuda: allocate %d pinned host bytes: %w", n, err)
	}
	return &HostBuf{d: d, p: p, Bytes: unsafe.Slice((*byte)(p), n)}, nil
}

// Float32s views the buffer as float32 values.
func (h *HostBuf) Float32s() []float32 {
	return unsafe.Slice((*float32)(h.p), len(h.Bytes)/4)
}

// Int32s views the buffer as int32 values.
func (h *HostBuf) Int32s() []int32 {
	return unsafe.Slice((*int32)(h.p), len(h.Bytes)/4)
}

// Uint64s views the buffer as uint64 values.
func (h *HostBuf) Uint64s() []uint64 {
	return unsafe.Slice((*uint64)(h.p), len(h.Bytes)/8)
}

// Free releases the buffer; its slices must not be used after.
func (h *HostBuf) Free() error {
	if h == nil || h.p == nil {
		return nil
	}
	p := h.p
	h.p, h.Bytes = nil, nil
	return h.d.do(func() error { return h.d.drv.hostFree(p) })
}

// Stream is an ordered queue of device work.
type Stream struct {
	d *Device
	s uintptr
	// scratch for Launch (a stream belongs to one goroutine)
	args []uint64
}

// NewStream creates a stream that does not synchronise with the legacy default stream.
func (d *Device) NewStream() (*Stream, error) {
	s := &Stream{d: d}
	if err := d.do(func() (e error) { s.s, e = d.drv.streamCreate(); return }); err != nil {
		return nil, err
	}
	return s, nil
}

// Destroy destroys the stream (after its queued work completes).
func (s *Stream) Destroy() error {
	return s.d.do(func() error { return s.d.drv.streamDestroy(s.s) })
}

// Sync waits for everything queued on the stream.
func (s *Stream) Sync() error {
	return s.d.do(func() error { return s.d.drv.streamSync(s.s) })
}

// WaitEvent makes work queued on s after this call wait until e has happened
// (e recorded on another stream).
func (s *Stream) WaitEvent(e *Event) error {
	return s.d.do(func() error { return s.d.drv.streamWaitEvent(s.s, e.e) })
}

// CopyToDevice queues a copy of n bytes from pinned host memory src (at byte
// offset off) to dst.
func (s *Stream) CopyToDevice(dst DevPtr, src *HostBuf, off, n int) error {
	if n == 0 {
		return nil
	}
	if off < 0 || off+n > len(src.Bytes) {
		return fmt.Errorf("cuda: copy %d bytes at %d from a %d-byte host buffer", n, off, len(src.Bytes))
	}
	return s.d.do(func() error { return s.d.drv.copyHtoD(dst, unsafe.Add(src.p, off), uint64(n), s.s) })
}

// CopyFromDevice queues a copy of n bytes from src into pinned host memory dst at offset off.
func (s *Stream) CopyFromDevice(dst *HostBuf, off int, src DevPtr, n int) error {
	if n == 0 {
		return nil
	}
	if off < 0 || off+n > len(dst.Bytes) {
		return fmt.Errorf("cuda: copy %d bytes at %d into a %d-byte host buffer", n, off, len(dst.Bytes))
	}
	return s.d.do(func() error { return s.d.drv.copyDtoH(unsafe.Add(dst.p, off), src, uint64(n), s.s) })
}

// CopyDevice queues a device-to-device copy of n bytes.
func (s *Stream) CopyDevice(dst, src DevPtr, n int) error {
	if n == 0 {
		return nil
	}
	return s.d.do(func() error { return s.d.drv.copyDtoD(dst, src, uint64(n), s.s) })
}

// Memset queues setting n bytes at dst to v.
func (s *Stream) Memset(dst DevPtr, v byte, n int) error {
	if n == 0 {
		return nil
	}
	return s.d.do(func() error { return s.d.drv.memsetD8(dst, v, uint64(n), s.s) })
}

// Launch queues kernel f on grid x block threads with shared bytes of dynamic
// shared memory; args are packed as packArgs describes.
func (s *Stream) Launch(f *Func, grid, block [3]uint32, shared uint32, args ...any) error {
	packed, err := packArgs(s.args, args...)
	if err != nil {
		return fmt.Errorf("cuda: launch %s: %w", f.name, err)
	}
	s.args = packed
	for _, g := range grid {
		if g == 0 {
			return nil // nothing to do
		}
	}
	return s.d.do(func() error {
		if err := s.d.drv.launch(f.f, grid, block, shared, s.s, packed); err != nil {
			return fmt.Errorf("cuda: launch %s: %w", f.name, err)
		}
		return nil
	})
}

// Event marks a point in a stream, for timing and waiting.
type Event struct {
	d *Device
	e uintptr
}

// NewEvent creates an event that records timing.
func (d *Device) NewEvent() (*Event, error) {
	e := &Event{d: d}
	if err := d.do(func() (err error) { e.e, err = d.drv.eventCreate(); return }); err != nil {
		return nil, err
	}
	return e, nil
}

// Record queues the event on s.
func (e *Event) Record(s *Stream) error {
	return e.d.do(func() error { return e.d.drv.eventRecord(e.e, s.s) })
}

// Sync waits until the event has happened.
func (e *Event) Sync() error { return e.d.do(func() error { return e.d.drv.eventSync(e.e) }) }

// Destroy frees the event.
func (e *Event) Destroy() error { return e.d.do(func() error { return e.d.drv.eventDestroy(e.e) }) }

// Elapsed returns the milliseconds between two recorded, completed events.
func Elapsed(start, end *Event) (float32, error) {
	var ms float32
	err := start.d.do(func() (e error) { ms, e = start.d.drv.eventElapsed(start.e, end.e); return })
	return ms, err
}

// Module is loaded PTX (JIT-compiled by the driver for this GPU).
type Module struct {
	d *Device
	m uintptr
}

// Func is a kernel of a Module.
type Func struct {
	f    uintptr
	name string
}

// LoadModule JIT-compiles ptx (with or without a trailing NUL).
func (d *Device) LoadModule(ptx []byte) (*Module, error) {
	img := ptx
	if len(img) == 0 || img[len(img)-1] != 0 {
		img = append(append(make([]byte, 0, len(ptx)+1), ptx...), 0)
	}
	m := &Module{d: d}
	if err := d.do(func() (e error) { m.m, e = d.drv.moduleLoad(img); return }); err != nil {
		return nil, err
	}
	return m, nil
}

// Func looks up an extern "C" kernel by name.
func (m *Module) Func(name string) (*Func, error) {
	f := &Func{name: name}
	if err := m.d.do(func() (e error) { f.f, e = m.d.drv.moduleFunc(m.m, name); return }); err != nil {
		return nil, fmt.Errorf("cuda: kernel %s: %w", name, err)
	}
	return f, nil
}

// Unload frees the module.
func (m *Module) Unload() error { return m.d.do(func() error { return m.d.drv.moduleUnload(m.m) }) }

// BLAS is a cuBLAS handle bound to one stream; it belongs to one goroutine.
type BLAS struct {
	d           *Device
	h           uintptr
	alpha, beta *float32 // host scalars, kept on the heap for the library
}

// NewBLAS creates a cuBLAS handle whose work is queued on s.
func (d *Device) NewBLAS(s *Stream) (*BLAS, error) {
	b := &BLAS{d: d, alpha: new(float32), beta: new(float32)}
	err := d.do(func() error {
		h, err := d.drv.blasCreate()
		if err != nil {
			return err
		}
		b.h = h
		return d.drv.blasSetStream(h, s.s)
	})
	if err != nil {
		return nil, err
	}
	return b, nil
}

// Destroy frees the handle.
func (b *BLAS) Destroy() error { return b.d.do(func() error { return b.d.drv.blasDestroy(b.h) }) }

// BatchedRowMajor queues count row-major products of one shape in one call
// (cublasGemmBatchedEx): C_i = A_i · W_iᵀ with A_i [m, k] (lda), W_i [n, k]
// (ldw; a linear layer's weight) and C_i [m, n] (ldc), float32 accumulation.
// ptrs is device memory holding 3*count pointers: every W_i, then every A_i,
// then every C_i.
func (b *BLAS) BatchedRowMajor(m, n, k int, at DataType, lda int, wt DataType, ldw int, ct DataType, ldc int, count int, ptrs DevPtr) error {
	if count == 0 || m == 0 || n == 0 {
		return nil
	}
	*b.alpha, *b.beta = 1, 0
	// Column-major, as in GemmRowMajor: Cᵢᵀ [n, m] = Wᵢ · Aᵢᵀ.
	return b.d.do(func() error {
		return b.d.drv.gemmBatched(b.h, true, false, n, m, k, b.alpha, ptrs, wt, ldw, ptrs.Add(8*count), at, lda, b.beta,
			ptrs.Add(16*count), ct, ldc, count)
	})
}

// GemmRowMajor queues C = alpha * A · Bᵀ + beta * C for row-major matrices:
// A is [m, k] (lda elements between rows), B is [n, k] (a linear layer's
// [out, in] weight, ldb), C is [m, n] (ldc). A and B are at and bt, C is ct;
// accumulation is float32.
func (b *BLAS) GemmRowMajor(m, n, k int, alpha float32, a DevPtr, at DataType, lda int, bm DevPtr, bt DataType, ldb int,
	beta float32, c DevPtr, ct DataType, ldc int) error {
	if m == 0 || n == 0 {
		return nil
	}
	*b.alpha, *b.beta = alpha, beta
	// Column-major cuBLAS sees row-major C [m, n] as Cᵀ [n, m] = B · Aᵀ, where the
	// row-major B [n, k] is the column-major [k, n] matrix Bᵀ: transpose it back.
	return b.d.do(func() error {
		return b.d.drv.gemm(b.h, true, false, n, m, k, b.alpha, bm, bt, ldb, a, at, lda, b.beta, c, ct, ldc)
	})
}
