package moe

import (
	"testing"

	"github.com/switchyard-serving/switchyard/internal/gpu/cuda"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// BenchmarkUpload measures the host side of making one h-tiny expert resident
// (conversion to bf16 and the copy, into the fake's memory): BF16 checkpoints
// are copied as they are, Q8_0 and Q4_K ones dequantised on the host first.
// Reported as checkpoint bytes per second.
func BenchmarkUpload(b *testing.B) {
	const H, I = 1536, 512
	for _, dt := range []tensor.DType{tensor.BF16, tensor.Q8_0, tensor.Q4_K} {
		b.Run(dt.String(), func(b *testing.B) {
			var ew = randExperts(1, tensor.BF16, 1, H, I)[0]
			if dt != tensor.BF16 {
				ew = quantExpert(b, ew, dt)
			}
			f := cuda.NewFake(1<<30, FakeKernels())
			d, err := cuda.OpenFake(f)
			if err != nil {
				b.Fatal(err)
			}
			x, err := New(d, Config{Layers: 1, NumExperts: 1, Hidden: H, Intermediate: I, TopK: 1, BudgetBytes: 1 << 30, ReserveRows: 1})
			if err != nil {
				b.Fatal(err)
			}
			defer x.Close()
			b.SetBytes(int64(ew.Bytes()))
			for b.Loop() {
				if err := x.Acquire(0, 0, ew); err != nil {
					b.Fatal(err)
				}
				if err := x.Release(0, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func quantExpert(b *testing.B, ew hybrid.ExpertWeights, dt tensor.DType) hybrid.ExpertWeights {
	q := func(m tensor.Matrix) tensor.Matrix {
		v := make([]float32, m.Rows*m.Cols)
		for r := 0; r < m.Rows; r++ {
			tensor.DequantizeRow(m.DType, m.Row(r), v[r*m.Cols:(r+1)*m.Cols])
		}
		rb, _ := dt.RowBytes(m.Cols)
		data := make([]byte, m.Rows*rb)
		if dt == tensor.Q8_0 {
			tensor.QuantizeQ8_0(v, data)
		} else {
			tensor.QuantizeQ4_K(v, data)
		}
		out, err := tensor.NewMatrix(dt, m.Rows, m.Cols, data)
		if err != nil {
			b.Fatal(err)
		}
		return out
	}
	return hybrid.ExpertWeights{Gate: q(ew.Gate), Up: q(ew.Up), Down: q(ew.Down)}
}
