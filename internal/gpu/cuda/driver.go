package cuda

import (
	"errors"
	"fmt"
	"strings"
	"unsafe"
)

// DevPtr is a device address (CUdeviceptr).
type DevPtr uint64

// Add returns p advanced by n bytes.
func (p DevPtr) Add(n int) DevPtr { return p + DevPtr(n) }

// DataType is a cudaDataType element type, as cuBLAS takes it.
type DataType int32

// The element types used here.
const (
	R32F  DataType = 0  // CUDA_R_32F
	R16F  DataType = 2  // CUDA_R_16F
	R16BF DataType = 14 // CUDA_R_16BF
)

// Device attributes read at Open (CUdevice_attribute values).
const (
	attrMultiprocessors = 16
	attrMemClockKHz     = 36
	attrMemBusWidth     = 37
	attrL2Bytes         = 38
	attrCCMajor         = 75
	attrCCMinor         = 76
)

// Errors.
var (
	// ErrNotBuilt reports a binary built without the "cuda" build tag.
	ErrNotBuilt = errors.New("cuda: this switchyard binary was built without GPU support (build with -tags cuda, e.g. `make build-cuda`, or use the -cuda image)")
	// ErrNoDevice reports a driver with no usable GPU, or an ordinal out of range.
	ErrNoDevice = errors.New("cuda: no such GPU")
	// ErrOutOfMemory reports a device allocation the GPU cannot satisfy.
	ErrOutOfMemory = errors.New("cuda: out of device memory")
	// ErrDeviceLost reports a fault that leaves the CUDA context unusable
	// (illegal address or instruction, launch failure, uncorrectable ECC error,
	// a GPU that fell off the bus): the process must restart to use the GPU again.
	ErrDeviceLost = errors.New("cuda: the GPU context is lost")
	// ErrNotSupported reports a call the installed library refuses for these
	// types (CUBLAS_STATUS_NOT_SUPPORTED).
	ErrNotSupported = errors.New("cuda: not supported by the installed library")
)

// Error is a failed driver or cuBLAS call.
type Error struct {
	Call string // the API function
	Code int    // CUresult or cublasStatus_t
	Name string // the code's name, where the library gives one
}

func (e *Error) Error() string {
	if e.Name != "" {
		return fmt.Sprintf("cuda: %s: %s (%d)", e.Call, e.Name, e.Code)
	}
	return fmt.Sprintf("cuda: %s: error %d", e.Call, e.Code)
}

// Is maps codes to the sentinels: ErrOutOfMemory (CUDA_ERROR_OUT_OF_MEMORY,
// CUBLAS_STATUS_ALLOC_FAILED), ErrNoDevice (CUDA_ERROR_NO_DEVICE,
// CUDA_ERROR_INVALID_DEVICE), ErrDeviceLost (the sticky context errors,
// CUBLAS_STATUS_EXECUTION_FAILED) and ErrNotSupported (CUBLAS_STATUS_NOT_SUPPORTED).
func (e *Error) Is(target error) bool {
	blas := strings.HasPrefix(e.Call, "cublas")
	switch target {
	case ErrOutOfMemory:
		return (e.Code == 2 && !blas) || e.Name == "CUBLAS_STATUS_ALLOC_FAILED"
	case ErrNoDevice:
		return !blas && (e.Code == 100 || e.Code == 101)
	case ErrDeviceLost:
		switch e.Code {
		case 214, 700, 714, 715, 716, 717, 718, 719, 999: // ECC, illegal address, ..., launch failed, unknown
			return !blas
		}
		return e.Name == "CUBLAS_STATUS_EXECUTION_FAILED"
	case ErrNotSupported:
		return e.Name == "CUBLAS_STATUS_NOT_SUPPORTED"
	}
	return false
}

// driver is the CUDA driver API and cuBLAS, as this package uses them. The
// purego implementation calls the real libraries; Fake emulates them in memory.
// Calls that take a stream queue work on it; the others are synchronous.
type driver interface {
	deviceCount() (int, error) // also initialises the driver
	deviceGet(ordinal int) (int32, error)
	deviceName(dev int32) (string, error)
	deviceAttr(dev int32, attr int) (int, error)
	deviceTotalMem(dev int32) (uint64, error)
	versions() (driverVersion, blasVersion int)

	ctxRetain(dev int32) (uintptr, error)
	ctxRelease(dev int32) error
	ctxSetCurrent(ctx uintptr) error

	memInfo() (free, total uint64, err error)
	memAlloc(n uint64) (DevPtr, error)
	memFree(p DevPtr) error
	hostAlloc(n uint64) (unsafe.Pointer, error)
	hostFree(p unsafe.Pointer) error
	copyHtoD(dst DevPtr, src unsafe.Pointer, n uint64, stream uintptr) error
	copyDtoH(dst unsafe.Pointer, src DevPtr, n uint64, stream uintptr) error
	copyDtoD(dst, src DevPtr, n uint64, stream uintptr) error
	memsetD8(dst DevPtr, v byte, n uint64, stream uintptr) error

	streamCreate() (uintptr, error)
	streamDestroy(s uintptr) error
	streamSync(s uintptr) error
	streamWaitEvent(s, e uintptr) error
	eventCreate() (uintptr, error)
	eventDestroy(e uintptr) error
	eventRecord(e, s uintptr) error
	eventSync(e uintptr) error
	eventElapsed(start, end uintptr) (float32, error)

	moduleLoad(ptx []byte) (uintptr, error)
	moduleUnload(m uintptr) error
	moduleFunc(m uintptr, name string) (uintptr, error)
	launch(f uintptr, grid, block [3]uint32, shared uint32, stream uintptr, args []uint64) error

	blasCreate() (uintptr, error)
	blasDestroy(h uintptr) error
	blasSetStream(h, s uintptr) error
	// gemm is cublasGemmEx with CUBLAS_COMPUTE_32F and the default algorithm;
	// alpha and beta point at float32 values in host memory.
	gemm(h uintptr, transA, transB bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
		b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int) error
	// gemmBatched is cublasGemmBatchedEx with CUBLAS_COMPUTE_32F and the
	// default algorithm: count products of one shape; a, b and c are device
	// arrays of count pointers.
	gemmBatched(h uintptr, transA, transB bool, m, n, k int, alpha *float32, a DevPtr, at DataType, lda int,
		b DevPtr, bt DataType, ldb int, beta *float32, c DevPtr, ct DataType, ldc int, count int) error
}
