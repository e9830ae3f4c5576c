package hybrid

import (
	"sync"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// Weights holds every parameter of a Granite 4.0 hybrid model. Matrices alias the
// checkpoint's memory map (never copied); the small 1-D parameters are float32
// copies. Shapes are [rows, cols] = [out, in].
type Weights struct {
	Embed     tensor.Matrix // [vocab, hidden]
	Output    tensor.Matrix // [vocab, hidden]; equals Embed when tied
	FinalNorm []float32     // [hidden]
	Layers    []LayerWeights
}

// LayerWeights are one decoder layer's parameters. Only the fields of the layer's
// mixer kind are set.
type LayerWeights struct {
	Type      config.LayerType
	InputNorm []float32 // [hidden], before the mixer
	PostNorm  []float32 // [hidden], before the FFN

	Mamba *MambaWeights
	Attn  *AttnWeights

	// Router is [experts, hidden]; nil Router.Data for dense models.
	Router  tensor.Matrix
	Experts []ExpertWeights // [experts]
	Shared  ExpertWeights   // the always-on shared MLP (the only FFN of dense models)
}

// MambaWeights are the Mamba-2 mixer's parameters.
type MambaWeights struct {
	InProj  tensor.Matrix // [2*d_inner + 2*G*N + H, hidden]; rows z, xBC, dt
	ConvW   []float32     // [conv_dim, K]
	ConvB   []float32     // [conv_dim] (zeros when the checkpoint has no bias)
	DtBias  []float32     // [H]
	A       []float32     // [H], A = -exp(A_log) (negative)
	D       []float32     // [H]
	Norm    []float32     // [d_inner], gated RMSNorm weight (applied per group)
	OutProj tensor.Matrix // [hidden, d_inner]

	convT     []float32 // ConvW transposed, [K, conv_dim] (convByTap)
	convTOnce sync.Once
}

// convByTap returns the conv weights tap by tap: element k·conv_dim + ch is
// ConvW[ch·K + k], so that the conv runs as K vector products per token.
// Computed once, on first use.
func (w *MambaWeights) convByTap(K int) []float32 {
	w.convTOnce.Do(func() {
		cd := len(w.ConvW) / K
		w.convT = make([]float32, K*cd)
		for ch := range cd {
			for k := range K {
				w.convT[k*cd+ch] = w.ConvW[ch*K+k]
			}
		}
	})
	return w.convT
}

// AttnWeights are the attention mixer's parameters.
type AttnWeights struct {
	Q, K, V tensor.Matrix // [heads*hd, hidden], [kv*hd, hidden], [kv*hd, hidden]
	O       tensor.Matrix // [hidden, heads*hd]
}

// ExpertWeights are one SwiGLU MLP: down(silu(gate·x) ⊙ up·x).
type ExpertWeights struct {
	Gate tensor.Matrix // [I, hidden]
	Up   tensor.Matrix // [I, hidden]
	Down tensor.Matrix // [hidden, I]
}

// Bytes is the size of the expert's three matrices.
func (e ExpertWeights) Bytes() int { return e.Gate.Bytes() + e.Up.Bytes() + e.Down.Bytes() }
