// Package convert writes a Hugging Face Granite 4.0 hybrid checkpoint as a GGUF
// file of architecture `granitehybrid`, with the tensor mapping and metadata that
// llama.cpp's converter produces (spec section 5): A = -exp(A_log), squeezed conv
// weights, reshaped ssm_norm, split gate/up projections, q/k rows permuted for
// ggml's interleaved RoPE, and the byte-level BPE vocabulary.
//
// Weight matrices are written in the requested type (F32, F16, BF16 or any type
// tensor.CanQuantize encodes; a matrix whose width is not a whole number of
// quantization blocks falls back to Q8_0, then F16), or in one of llama.cpp's
// quantization mixes (Q4_K_M, Q5_K_M, MXFP4_MOE: see mix.go), which pick a type per tensor
// the way llama-quantize does. 1-D tensors, norms, ssm_a/ssm_d, biases, the router
// and the conv weights are always F32, as llama.cpp keeps them.
package convert

import (
	"errors"
	"fmt"
	"io"
	"math"
	"path/filepath"
	"time"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/safetensors"
	"github.com/switchyard-serving/switchyard/model/tensor"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
)

// ErrConvert reports a checkpoint that cannot be converted.
var ErrConvert = errors.New("convert: cannot convert")

// Options control the conversion.
type Options struct {
	Type     tensor.DType // type of the weight matrices (default F16); ignored when Mix is set
	Mix      Mix          // a llama.cpp quantization mix ("" for none)
	Progress io.Writer    // progress lines (nil: silent)
}

// out is one GGUF tensor: numpy shape [rows, cols] (leading dims flattened into
// rows; ne is the ggml shape written), and a producer of float32 rows.
type out struct {
	name string
	dt   tensor.DType
	ne   []uint64
	rows int
	cols int
	row  func(i int, dst []float32)
}

// HFToGGUF converts the checkpoint folder dir into the GGUF file path.
func HFToGGUF(dir, path string, o Options) error {
	if o.Type == 0 {
		o.Type = tensor.F16
	}
	if o.Mix != "" {
		dt, ok := o.Mix.defaultType()
		if !ok {
			return fmt.Errorf("%w: unknown quantization mix %q", ErrConvert, o.Mix)
		}
		o.Type = dt
	} else if !tensor.CanQuantize(o.Type) {
		return fmt.Errorf("%w: cannot write weights as %v", ErrConvert, o.Type)
	}
	c, err := config.Load(filepath.Join(dir, "config.json"))
	if err != nil {
		return err
	}
	if c.NumLayers(config.Mamba) > 0 && c.MambaExpand != 2 {
		return fmt.Errorf("%w: mamba_expand %d (llama.cpp's granitehybrid requires 2)", ErrConvert, c.MambaExpand)
	}
	tok, err := tokenizer.LoadHF(dir)
	if err != nil {
		return err
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return err
	}
	defer ck.Close()
	b := &builder{ck: ck, c: c, want: o.Type, mix: o.Mix}
	if err := b.plan(); err != nil {
		return err
	}
	w := gguf.NewWriter()
	writeMetadata(w, c, tok, o.Type, o.Mix)
	for _, t := range b.outs {
		size, err := t.dt.RowBytes(t.cols)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrConvert, t.name, err)
		}
		w.AddTensor(t.name, t.dt, t.ne, size*t.rows)
	}
	start, last := time.Now(), time.Now()
	return w.WriteFile(path, func(i int, dst []byte) error {
		t := b.outs[i]
		rb, _ := t.dt.RowBytes(t.cols)
		row := make([]float32, t.cols)
		for r := range t.rows {
			t.row(r, row)
			encodeRow(t.dt, row, dst[r*rb:(r+1)*rb])
		}
		if o.Progress != nil && (time.Since(last) > 2*time.Second || i == len(b.outs)-1) {
			last = time.Now()
			fmt.Fprintf(o.Progress, "convert: %d/%d tensors (%s), %.0fs\n", i+1, len(b.outs), t.name, time.Since(start).Seconds())
		}
		return nil
	})
}

func encodeRow(dt tensor.DType, src []float32, dst []byte) { tensor.Quantize(dt, src, dst) }

type builder struct {
	ck   *safetensors.Checkpoint
	c    *config.Config
	want tensor.DType
	mix  Mix
	outs []out
	err  error
}

// src returns the HF tensor or records an error naming it.
func (b *builder) src(name string, shape ...int) (safetensors.Tensor, bool) {
	t, ok := b.ck.Tensor(name)
	if !ok {
		if b.err == nil {
			b.err = fmt.Errorf("%w: %s is missing", ErrConvert, name)
		}
		return t, false
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	if t.Elements() != n {
		if b.err == nil {
			b.err = fmt.Errorf("%w: %s has shape %v, want %v", ErrConvert, name, t.Shape, shape)
		}
		return t, false
	}
	return t, true
}

// matType picks the stored type of a matrix with the given width.
func (b *builder) matType(cols int) tensor.DType {
	for _, dt := range []tensor.DType{b.want, tensor.Q8_0, tensor.F16} {
		if dt == tensor.F32 || dt == tensor.F16 || dt == tensor.BF16 {
			return dt
		}
		if _, err := dt.RowBytes(cols); err == nil {
			return dt
		}
	}
	return tensor.F16
}

// add maps rows [r0, r0+rows) of HF tensor t (viewed as [*, cols]) to a GGUF tensor.
// perm, if set, maps an output row to a source row (within the slice).
func (b *builder) add(name string, t safetensors.Tensor, r0, rows, cols int, dt tensor.DType, ne []uint64, perm func(int) int, xf func(float32) float32) {
	rb, _ := t.DType.RowBytes(cols)
	b.outs = append(b.outs, out{name: name, dt: dt, ne: ne, rows: rows, cols: cols, row: func(i int, dst []float32) {
		src := i
		if perm != nil {
			src = perm(i)
		}
		r := r0 + src
		tensor.DequantizeRow(t.DType, t.Data[r*rb:(r+1)*rb], dst)
		if xf != nil {
			for j := range dst {
				dst[j] = xf(dst[j])
			}
		}
	}})
}

// matrix adds a 2-D weight [rows, cols] (a row range of a possibly stacked source).
func (b *builder) matrix(gname string, t safetensors.Tensor, r0, rows, cols int, ne []uint64, perm func(int) int) {
	dt := b.matType(cols)
	if b.mix != "" {
		dt = b.mix.tensorType(b.c, gname, cols)
		// llama-quantize writes every tensor with ggml_n_dims dimensions.
		ne = trimDims(ne)
	}
	b.add(gname, t, r0, rows, cols, dt, ne, perm, nil)
}

// vector adds an always-F32 tensor of n values with the given ggml shape.
func (b *builder) vector(gname string, t safetensors.Tensor, n int, ne []uint64, xf func(float32) float32) {
	if b.mix != "" {
		ne = trimDims(ne)
	}
	b.add(gname, t, 0, 1, n, tensor.F32, ne, nil, xf)
}

// permuteQK returns the row map of llama.cpp's q/k permutation: within each head
// the rows (2, hd/2) are transposed to (hd/2, 2), turning HF's rotate_half layout
// into ggml's interleaved pairs.
func permuteQK(hd int) func(int) int {
	half := hd / 2
	return func(r int) int {
		h, i := r/hd, r%hd
		// output row i = 2*k + j takes source row j*half + k.
		k, j := i/2, i%2
		return h*hd + j*half + k
	}
}

// dims is u, trimmed like llama-quantize's output in mix mode.
func (b *builder) dims(v ...int) []uint64 {
	if b.mix != "" {
		return trimDims(u(v...))
	}
	return u(v...)
}

// trimDims drops trailing (ggml order) dimensions of size 1, keeping at least
// one: ggml_n_dims, which llama-quantize uses when it writes a tensor.
func trimDims(ne []uint64) []uint64 {
	n := len(ne)
	for n > 1 && ne[n-1] == 1 {
		n--
	}
	return ne[:n]
}

func u(v ...int) []uint64 {
	out := make([]uint64, len(v))
	for i, x := range v {
		out[i] = uint64(x)
	}
	return out
}

func (b *builder) plan() error {
	c := b.c
	H, V := c.Hidden, c.VocabSize
	if t, ok := b.src("model.embed_tokens.weight", V, H); ok {
		b.matrix("token_embd.weight", t, 0, V, H, u(H, V), nil)
	}
	if !c.TieWordEmbeddings {
		if t, ok := b.src("lm_head.weight", V, H); ok {
			b.matrix("output.weight", t, 0, V, H, u(H, V), nil)
		}
	}
	if t, ok := b.src("model.norm.weight", H); ok {
		b.vector("output_norm.weight", t, H, u(H), nil)
	}
	din, cd, nh, K, G := c.DInner(), c.ConvDim(), c.MambaHeads, c.MambaDConv, c.MambaGroups
	for i, lt := range c.LayerTypes {
		p := fmt.Sprintf("model.layers.%d.", i)
		g := fmt.Sprintf("blk.%d.", i)
		if t, ok := b.src(p+"input_layernorm.weight", H); ok {
			b.vector(g+"attn_norm.weight", t, H, u(H), nil)
		}
		if t, ok := b.src(p+"post_attention_layernorm.weight", H); ok {
			b.vector(g+"ffn_norm.weight", t, H, u(H), nil)
		}
		if lt == config.Mamba {
			if t, ok := b.src(p+"mamba.in_proj.weight", c.InProjDim(), H); ok {
				b.matrix(g+"ssm_in.weight", t, 0, c.InProjDim(), H, u(H, c.InProjDim()), nil)
			}
			if t, ok := b.src(p+"mamba.conv1d.weight", cd, 1, K); ok {
				b.add(g+"ssm_conv1d.weight", t, 0, cd, K, tensor.F32, b.dims(K, cd), nil, nil)
			}
			if c.MambaConvBias {
				if t, ok := b.src(p+"mamba.conv1d.bias", cd); ok {
					b.vector(g+"ssm_conv1d.bias", t, cd, u(cd), nil)
				}
			}
			if t, ok := b.src(p+"mamba.dt_bias", nh); ok {
				b.vector(g+"ssm_dt.bias", t, nh, u(nh), nil)
			}
			if t, ok := b.src(p+"mamba.A_log", nh); ok {
				b.vector(g+"ssm_a", t, nh, u(1, nh), func(v float32) float32 { return -float32(math.Exp(float64(v))) })
			}
			if t, ok := b.src(p+"mamba.D", nh); ok {
				b.vector(g+"ssm_d", t, nh, u(1, nh), nil)
			}
			if t, ok := b.src(p+"mamba.norm.weight", din); ok {
				b.vector(g+"ssm_norm.weight", t, din, u(din/G, G), nil)
			}
			if t, ok := b.src(p+"mamba.out_proj.weight", H, din); ok {
				b.matrix(g+"ssm_out.weight", t, 0, H, din, u(din, H), nil)
			}
		} else {
			hd := c.HeadDim()
			if t, ok := b.src(p+"self_attn.q_proj.weight", c.QDim(), H); ok {
				b.matrix(g+"attn_q.weight", t, 0, c.QDim(), H, u(H, c.QDim()), permuteQK(hd))
			}
			if t, ok := b.src(p+"self_attn.k_proj.weight", c.KVDim(), H); ok {
				b.matrix(g+"attn_k.weight", t, 0, c.KVDim(), H, u(H, c.KVDim()), permuteQK(hd))
			}
			if t, ok := b.src(p+"self_attn.v_proj.weight", c.KVDim(), H); ok {
				b.matrix(g+"attn_v.weight", t, 0, c.KVDim(), H, u(H, c.KVDim()), nil)
			}
			if t, ok := b.src(p+"self_attn.o_proj.weight", H, c.QDim()); ok {
				b.matrix(g+"attn_output.weight", t, 0, H, c.QDim(), u(c.QDim(), H), nil)
			}
		}
		S := c.SharedIntermediate
		if c.IsMoE() {
			E, I := c.Experts, c.Intermediate
			if t, ok := b.src(p+"block_sparse_moe.router.layer.weight", E, H); ok {
				b.add(g+"ffn_gate_inp.weight", t, 0, E, H, tensor.F32, b.dims(H, E), nil, nil)
			}
			if t, ok := b.src(p+"block_sparse_moe.input_linear.weight", E, 2*I, H); ok {
				// Rows of expert e: gate = [e*2I, e*2I+I), up = [e*2I+I, (e+1)*2I).
				b.matrix(g+"ffn_gate_exps.weight", t, 0, E*I, H, u(H, I, E), func(r int) int { return (r/I)*2*I + r%I })
				b.matrix(g+"ffn_up_exps.weight", t, 0, E*I, H, u(H, I, E), func(r int) int { return (r/I)*2*I + I + r%I })
			}
			if t, ok := b.src(p+"block_sparse_moe.output_linear.weight", E, H, I); ok {
				b.matrix(g+"ffn_down_exps.weight", t, 0, E*H, I, u(I, H, E), nil)
			}
			if t, ok := b.src(p+"shared_mlp.input_linear.weight", 2*S, H); ok {
				b.matrix(g+"ffn_gate_shexp.weight", t, 0, S, H, u(H, S), nil)
				b.matrix(g+"ffn_up_shexp.weight", t, S, S, H, u(H, S), nil)
			}
			if t, ok := b.src(p+"shared_mlp.output_linear.weight", H, S); ok {
				b.matrix(g+"ffn_down_shexp.weight", t, 0, H, S, u(S, H), nil)
			}
		} else {
			if t, ok := b.src(p+"shared_mlp.input_linear.weight", 2*S, H); ok {
				b.matrix(g+"ffn_gate.weight", t, 0, S, H, u(H, S), nil)
				b.matrix(g+"ffn_up.weight", t, S, S, H, u(H, S), nil)
			}
			if t, ok := b.src(p+"shared_mlp.output_linear.weight", H, S); ok {
				b.matrix(g+"ffn_down.weight", t, 0, H, S, u(S, H), nil)
			}
		}
	}
	return b.err
}

func writeMetadata(w *gguf.Writer, c *config.Config, tok *tokenizer.Tokenizer, dt tensor.DType, mix Mix) {
	const a = "granitehybrid."
	w.AddString("general.architecture", "granitehybrid")
	w.AddString("general.name", "switchyard-converted")
	// llama_ftype numbers.
	ft := map[tensor.DType]uint32{tensor.F32: 0, tensor.F16: 1, tensor.Q4_0: 2, tensor.Q4_1: 3, tensor.Q8_0: 7,
		tensor.Q5_0: 8, tensor.Q5_1: 9, tensor.Q4_K: 15, tensor.Q5_K: 16, tensor.Q6_K: 18, tensor.BF16: 32, tensor.MXFP4: 38}[dt]
	if mix != "" {
		ft = mix.fileType()
	}
	w.AddUint32("general.file_type", ft)
	if dt.Quantized() {
		w.AddUint32("general.quantization_version", 2) // ggml's GGML_QNT_VERSION
	}
	ctx := uint32(c.MaxPositionEmbed)
	if !c.UseRope() {
		ctx = 1 << 20
	}
	w.AddUint32(a+"context_length", ctx)
	w.AddUint32(a+"embedding_length", uint32(c.Hidden))
	w.AddUint32(a+"block_count", uint32(c.Layers))
	ff := c.Intermediate
	if !c.IsMoE() {
		ff = c.SharedIntermediate
	}
	w.AddUint32(a+"feed_forward_length", uint32(ff))
	w.AddUint32(a+"attention.head_count", uint32(c.Heads))
	kv := make([]int32, c.Layers)
	for i, lt := range c.LayerTypes {
		if lt == config.Attention {
			kv[i] = int32(c.KVHeads)
		}
	}
	w.AddInt32s(a+"attention.head_count_kv", kv)
	w.AddUint32(a+"rope.dimension_count", uint32(c.HeadDim()))
	w.AddFloat32(a+"rope.freq_base", c.RopeTheta)
	w.AddBool(a+"rope.scaling.finetuned", c.UseRope())
	w.AddFloat32(a+"attention.layer_norm_rms_epsilon", c.RMSNormEps)
	if c.IsMoE() {
		w.AddUint32(a+"expert_count", uint32(c.Experts))
		w.AddUint32(a+"expert_used_count", uint32(c.ExpertsPerTok))
		w.AddUint32(a+"expert_shared_feed_forward_length", uint32(c.SharedIntermediate))
	}
	w.AddFloat32(a+"attention.scale", c.AttentionMult)
	w.AddFloat32(a+"embedding_scale", c.EmbeddingMultiplier)
	w.AddFloat32(a+"residual_scale", c.ResidualMultiplier)
	w.AddFloat32(a+"logit_scale", c.LogitsScaling)
	if c.NumLayers(config.Mamba) > 0 {
		w.AddUint32(a+"ssm.conv_kernel", uint32(c.MambaDConv))
		w.AddUint32(a+"ssm.state_size", uint32(c.MambaDState))
		w.AddUint32(a+"ssm.group_count", uint32(c.MambaGroups))
		w.AddUint32(a+"ssm.inner_size", uint32(c.DInner()))
		w.AddUint32(a+"ssm.time_step_rank", uint32(c.MambaHeads))
	}
	w.AddUint32(a+"vocab_size", uint32(c.VocabSize))
	v := tok.Vocab()
	w.AddString("tokenizer.ggml.model", "gpt2")
	pre := v.Pre
	if pre == "" {
		pre = "gpt-2"
	}
	w.AddString("tokenizer.ggml.pre", pre)
	// Pad the vocabulary to the model's rows with unused placeholders, as llama.cpp does.
	tokens := append([]string(nil), v.Tokens...)
	types := append([]int32(nil), v.Types...)
	for len(tokens) < c.VocabSize {
		tokens = append(tokens, fmt.Sprintf("[PAD%d]", len(tokens)))
		types = append(types, 5)
	}
	w.AddStrings("tokenizer.ggml.tokens", tokens)
	w.AddInt32s("tokenizer.ggml.token_type", types)
	w.AddStrings("tokenizer.ggml.merges", v.Merges)
	for _, kv := range []struct {
		key string
		id  int
	}{{"bos_token_id", v.BOS}, {"eos_token_id", v.EOS}, {"padding_token_id", v.PAD}} {
		if kv.id >= 0 {
			w.AddUint32("tokenizer.ggml."+kv.key, uint32(kv.id))
		}
	}
	w.AddBool("tokenizer.ggml.add_bos_token", v.AddBOS)
	w.AddBool("tokenizer.ggml.add_eos_token", false)
	if v.ChatTemplate != "" {
		w.AddString("tokenizer.chat_template", v.ChatTemplate)
	}
}
