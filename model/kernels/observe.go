package kernels

import (
	"sync/atomic"
	"time"

	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Product is one matrix product a ProductObserver sees: the weight
// matrix's type, layout and shape, the input rows, whether it ran on the
// caller alone (MatMulSerial, MatMulSerialInvariant, or MatMul with one
// thread) and how long it took.
type Product struct {
	DType      tensor.DType
	Layout     tensor.Layout
	Rows, Cols int
	N          int // input rows
	Bytes      int // the weight matrix's bytes
	Serial     bool
	Elapsed    time.Duration
}

// ProductObserver is called after every matrix product while it is set
// (SetProductObserver), from the goroutine that ran it: products run on
// several goroutines at once (routed experts), so it must be safe for
// concurrent use. It is a measuring tool (bench --breakdown), not for
// production paths: each product then reads the clock twice.
type ProductObserver func(Product)

var productObserver atomic.Pointer[ProductObserver]

// SetProductObserver sets the observer of every product (nil: none, the
// default) and returns the previous one. Without an observer a product
// pays one atomic load for this.
func SetProductObserver(f ProductObserver) (prev ProductObserver) {
	var p *ProductObserver
	if f != nil {
		p = &f
	}
	if old := productObserver.Swap(p); old != nil {
		return *old
	}
	return nil
}

// observed runs matMulThen and reports it to the observer.
func observed(obs *ProductObserver, out []float32, w tensor.Matrix, x []float32, n, threads int, inv bool, after []byte) {
	t0 := time.Now()
	matMulThen(out, w, x, n, threads, inv, after)
	(*obs)(Product{DType: w.DType, Layout: w.Layout, Rows: w.Rows, Cols: w.Cols, N: n, Bytes: w.Bytes(),
		Serial: threads == 1, Elapsed: time.Since(t0)})
}
