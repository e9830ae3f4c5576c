package hybrid

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"

	"github.com/switchyard-serving/switchyard/model/config"
	"github.com/switchyard-serving/switchyard/model/gguf"
	"github.com/switchyard-serving/switchyard/model/internal/fileio"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/safetensors"
	"github.com/switchyard-serving/switchyard/model/tensor"
)

// ErrTensor reports a missing or mis-shaped checkpoint tensor; the message names it.
var ErrTensor = errors.New("hybrid: bad checkpoint tensor")

// source looks tensors up by their checkpoint name.
type source interface {
	lookup(name string) (dt tensor.DType, shape []int, data []byte, ok bool, err error)
}

type loader struct {
	src source
	// LayerFilter, when set, skips routed experts for which it returns false (an
	// expert node loads only its assignment).
	keepExpert func(layer, expert int) bool
	// arena, when set, receives a copy of every matrix (LoadOptions.NoMmap
	// without an ExpertCache).
	arena *fileio.Arena
	// cache, when set (LoadOptions.ExpertCache, with NoMmap), holds the
	// routed experts kept; cl is this load's use of it (beginExperts).
	cache *ExpertCache
	srcID string
	cl    *cacheLoad
}

func (l *loader) raw(name string, shape ...int) (tensor.DType, []byte, error) {
	dt, sh, data, ok, err := l.src.lookup(name)
	if err != nil {
		return 0, nil, fmt.Errorf("%w: %s: %v", ErrTensor, name, err)
	}
	if !ok {
		return 0, nil, fmt.Errorf("%w: %s is missing", ErrTensor, name)
	}
	// Shapes are compared as ggml does, up to trailing (ggml order) dimensions of
	// size 1: llama-quantize writes ssm_norm.weight of a one-group model as [3072]
	// where the converter wrote [1, 3072].
	if !tensor.SameShape(sh, shape) {
		return 0, nil, fmt.Errorf("%w: %s has shape %v, want %v", ErrTensor, name, sh, shape)
	}
	return dt, data, nil
}

func (l *loader) has(name string) bool {
	_, _, _, ok, err := l.src.lookup(name)
	return ok && err == nil
}

// matrix loads a 2-D (or stacked 3-D flattened to rows) weight as a Matrix,
// copied into the arena when there is one.
func (l *loader) matrix(name string, rows, cols int, shape ...int) (tensor.Matrix, error) {
	m, err := l.mapped(name, rows, cols, shape...)
	if err != nil {
		return m, err
	}
	return l.own(name, m)
}

// mapped loads a weight as matrix does, but never copies it: the routed
// experts' stacks, of which an expert node keeps its assignment and a trunk
// nothing, are copied expert by expert (own).
func (l *loader) mapped(name string, rows, cols int, shape ...int) (tensor.Matrix, error) {
	if len(shape) == 0 {
		shape = []int{rows, cols}
	}
	dt, data, err := l.raw(name, shape...)
	if err != nil {
		return tensor.Matrix{}, err
	}
	m, err := tensor.NewMatrix(dt, rows, cols, data)
	if err != nil {
		return tensor.Matrix{}, fmt.Errorf("%w: %s: %v", ErrTensor, name, err)
	}
	return m, nil
}

// own returns m, copied into the arena when there is one.
func (l *loader) own(name string, m tensor.Matrix) (tensor.Matrix, error) {
	if l.arena == nil {
		return m, nil
	}
	c, err := copyMatrix(l.arena, m)
	if err != nil {
		return tensor.Matrix{}, fmt.Errorf("%s: copying out of the map: %w", name, err)
	}
	return c, nil
}

// copyMatrix copies m into a: packed for the kernels where that makes their
// products faster (kernels.CanPack: Q8_0, Q4_K, Q5_K and Q6_K in 16-row
// groups), else as it is. The rows are read from the file in pieces of
// whole groups and packed from there.
func copyMatrix(a *fileio.Arena, m tensor.Matrix) (tensor.Matrix, error) {
	if !kernels.CanPack(m) {
		data, err := a.Copy(m.Data)
		if err != nil {
			return tensor.Matrix{}, err
		}
		m.Data = data
		return m, nil
	}
	dst, err := a.Alloc(kernels.PackedBytes(m.DType, m.Rows, m.Cols))
	if err != nil {
		return tensor.Matrix{}, err
	}
	rb := m.RowStride()
	step := max(16, packPiece/rb&^15) // rows per piece: whole groups, about packPiece bytes
	bp := packBufs.Get().(*[]byte)
	defer packBufs.Put(bp)
	if cap(*bp) < step*rb {
		*bp = make([]byte, step*rb)
	}
	buf := *bp
	off := 0
	var layout tensor.Layout
	for r := 0; r < m.Rows; r += step {
		piece := m.Slice(r, min(r+step, m.Rows))
		fileio.Read(buf[:len(piece.Data)], piece.Data)
		piece.Data = buf[:len(piece.Data)]
		n := kernels.PackedBytes(piece.DType, piece.Rows, piece.Cols)
		layout = kernels.Pack(dst[off:off+n], piece).Layout
		off += n
	}
	return tensor.Matrix{DType: m.DType, Rows: m.Rows, Cols: m.Cols, Data: dst, Layout: layout}, nil
}

// packPiece is how many bytes of a matrix copyMatrix reads at a time before
// packing them; packBufs holds the buffers, reused across matrices.
const packPiece = 4 << 20

var packBufs = sync.Pool{New: func() any { return new([]byte) }}

// expert returns the parts of routed expert e of layer i from their
// stacks: slices of the map, copies in the arena, or copies shared through
// the expert cache.
func (l *loader) expert(i, e int, parts ...expertPart) ([]tensor.Matrix, error) {
	if l.cl != nil {
		return l.cl.get(i, e, parts)
	}
	out := make([]tensor.Matrix, len(parts))
	for j, p := range parts {
		var err error
		if out[j], err = l.own(p.name, p.stack.Slice(p.r0, p.r1)); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// routerMatrix loads a router's weights widened to float32 (exactly) when
// they are bf16 or f16, as llama.cpp keeps them (ffn_gate_inp stays F32 in
// its files): the router's product then runs with float32 activations
// rather than bf16 ones (see kernels.SetBF16Activations), and expert
// selection, which hinges on small logit margins, keeps its precision. The
// matrix is small (experts x hidden).
func (l *loader) routerMatrix(name string, rows, cols int) (tensor.Matrix, error) {
	m, err := l.matrix(name, rows, cols)
	if err != nil || (m.DType != tensor.BF16 && m.DType != tensor.F16) {
		return m, err
	}
	data := make([]byte, 4*rows*cols)
	row := make([]float32, cols)
	for r := 0; r < rows; r++ {
		tensor.DequantizeRow(m.DType, m.Row(r), row)
		for c, v := range row {
			binary.LittleEndian.PutUint32(data[4*(r*cols+c):], math.Float32bits(v))
		}
	}
	return tensor.NewMatrix(tensor.F32, rows, cols, data)
}

// vector loads a small tensor as float32 values (any float dtype).
func (l *loader) vector(name string, shape ...int) ([]float32, error) {
	dt, data, err := l.raw(name, shape...)
	if err != nil {
		return nil, err
	}
	n := 1
	for _, d := range shape {
		n *= d
	}
	if dt != tensor.F32 && dt != tensor.F16 && dt != tensor.BF16 {
		return nil, fmt.Errorf("%w: %s is %s; 1-D parameters must be F32, F16 or BF16", ErrTensor, name, dt)
	}
	rb, _ := dt.RowBytes(n)
	if len(data) != rb {
		return nil, fmt.Errorf("%w: %s has %d bytes, want %d", ErrTensor, name, len(data), rb)
	}
	out := make([]float32, n)
	tensor.DequantizeRow(dt, data, out)
	return out, nil
}

// ---------------------------------------------------------------- HF safetensors

type stSource struct{ c *safetensors.Checkpoint }

func (s stSource) lookup(name string) (tensor.DType, []int, []byte, bool, error) {
	t, ok := s.c.Tensor(name)
	if !ok {
		return 0, nil, nil, false, nil
	}
	return t.DType, t.Shape, t.Data, true, nil
}

// LoadOptions tune loading.
type LoadOptions struct {
	// KeepExpert, when non-nil, selects the routed experts to map; the others are
	// left empty (an expert node loads only its assignment; a trunk node none).
	KeepExpert func(layer, expert int) bool
	// KVDType is the element type of the sessions' KV caches (Model.KVDType):
	// BF16, F32 or Q8_0 (a head size that is a multiple of 32); the zero
	// value is DefaultKVDType (BF16).
	KVDType tensor.DType
	// NoMmap copies every weight matrix the model keeps (the trunk's, or an
	// expert node's assignment) out of the file's memory map into anonymous
	// memory advised for transparent huge pages, as llama.cpp's --no-mmap
	// reads the file into memory. Decode ran 14-42% faster that way on the
	// VM measured (docs/performance.md: Memory-mapped or copied weights), at
	// the cost of anonymous memory the size of those matrices (no longer
	// shared between processes through the page cache) and the copy at load.
	// Untouched tails of the arena's chunks take address space, not memory.
	NoMmap bool
	// ExpertCache, with NoMmap, copies only the routed experts kept, and
	// shares them with the other models loaded from the same checkpoint
	// through the same cache (an expert node's successive assignments: see
	// ExpertCache); the other matrices stay in the file's map (an expert node
	// computes nothing else).
	ExpertCache *ExpertCache
}

// newLoader returns a loader of src (read from path) with opt's expert
// filter, arena and expert cache.
func newLoader(src source, path string, opt LoadOptions) *loader {
	l := &loader{src: src, keepExpert: opt.KeepExpert}
	switch {
	case opt.NoMmap && opt.ExpertCache != nil:
		l.cache, l.srcID = opt.ExpertCache, sourceID(path)
	case opt.NoMmap:
		l.arena = &fileio.Arena{}
	}
	return l
}

// copied is the size of the model's copies: the arena's, and the experts it
// holds in the cache.
func (l *loader) copied() int64 {
	var n int64
	if l.cl != nil {
		n = l.cl.bytes
	}
	if l.arena != nil {
		n += l.arena.Bytes()
	}
	return n
}

// closeWith returns a Model.closer that releases the loader's arena and its
// cached experts after closing the source.
func (l *loader) closeWith(close func() error) func() error {
	if l.arena == nil && l.cache == nil {
		return close
	}
	return func() error {
		err := close()
		if l.arena != nil {
			if e := l.arena.Close(); err == nil {
				err = e
			}
		}
		if l.cl != nil {
			if e := l.cl.release(); err == nil {
				err = e
			}
		}
		return err
	}
}

// beginExperts starts the load's use of the expert cache, if it has one,
// with the routed experts c's layers keep.
func (l *loader) beginExperts(c *config.Config) {
	if l.cache == nil || !c.IsMoE() {
		return
	}
	keep := map[[2]int]bool{}
	for i := range c.Layers {
		for e := range c.Experts {
			if l.keepExpert == nil || l.keepExpert(i, e) {
				keep[[2]int{i, e}] = true
			}
		}
	}
	l.cl = l.cache.begin(l.srcID, keep)
}

// kvDType is the KV element type the options ask for (DefaultKVDType when unset).
func (o LoadOptions) kvDType() tensor.DType {
	if o.KVDType == 0 {
		return DefaultKVDType
	}
	return o.KVDType
}

// LoadHF loads a Hugging Face checkpoint folder (config.json + safetensors).
func LoadHF(dir string, opt LoadOptions) (*Model, error) {
	if err := CheckKVDType(opt.KVDType); err != nil {
		return nil, err
	}
	cfg, err := config.Load(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, err
	}
	if err := checkKVDTypeFor(opt.KVDType, cfg.HeadDim()); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	ck, err := safetensors.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	l := newLoader(stSource{ck}, dir, opt)
	w, err := l.loadHF(cfg)
	if err != nil {
		l.closeWith(ck.Close)()
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	m := New(cfg, w)
	m.KVDType = opt.kvDType()
	m.closer, m.copied = l.closeWith(ck.Close), l.copied()
	return m, nil
}

func (l *loader) loadHF(c *config.Config) (*Weights, error) {
	l.beginExperts(c)
	H, V := c.Hidden, c.VocabSize
	w := &Weights{}
	var err error
	if w.Embed, err = l.matrix("model.embed_tokens.weight", V, H); err != nil {
		return nil, err
	}
	switch {
	case !c.TieWordEmbeddings:
		if w.Output, err = l.matrix("lm_head.weight", V, H); err != nil {
			return nil, err
		}
	default:
		w.Output = w.Embed
	}
	if w.FinalNorm, err = l.vector("model.norm.weight", H); err != nil {
		return nil, err
	}
	din, cd, nh, K := c.DInner(), c.ConvDim(), c.MambaHeads, c.MambaDConv
	for i, lt := range c.LayerTypes {
		p := fmt.Sprintf("model.layers.%d.", i)
		lw := LayerWeights{Type: lt}
		if lw.InputNorm, err = l.vector(p+"input_layernorm.weight", H); err != nil {
			return nil, err
		}
		if lw.PostNorm, err = l.vector(p+"post_attention_layernorm.weight", H); err != nil {
			return nil, err
		}
		if lt == config.Mamba {
			mw := &MambaWeights{}
			if mw.InProj, err = l.matrix(p+"mamba.in_proj.weight", c.InProjDim(), H); err != nil {
				return nil, err
			}
			if mw.ConvW, err = l.vector(p+"mamba.conv1d.weight", cd, 1, K); err != nil {
				return nil, err
			}
			if c.MambaConvBias {
				if mw.ConvB, err = l.vector(p+"mamba.conv1d.bias", cd); err != nil {
					return nil, err
				}
			} else {
				mw.ConvB = make([]float32, cd)
			}
			if mw.DtBias, err = l.vector(p+"mamba.dt_bias", nh); err != nil {
				return nil, err
			}
			alog, err := l.vector(p+"mamba.A_log", nh)
			if err != nil {
				return nil, err
			}
			mw.A = make([]float32, nh)
			for h, v := range alog {
				mw.A[h] = -float32(math.Exp(float64(v)))
			}
			if mw.D, err = l.vector(p+"mamba.D", nh); err != nil {
				return nil, err
			}
			if mw.Norm, err = l.vector(p+"mamba.norm.weight", din); err != nil {
				return nil, err
			}
			if mw.OutProj, err = l.matrix(p+"mamba.out_proj.weight", H, din); err != nil {
				return nil, err
			}
			lw.Mamba = mw
		} else {
			aw := &AttnWeights{}
			if aw.Q, err = l.matrix(p+"self_attn.q_proj.weight", c.QDim(), H); err != nil {
				return nil, err
			}
			if aw.K, err = l.matrix(p+"self_attn.k_proj.weight", c.KVDim(), H); err != nil {
				return nil, err
			}
			if aw.V, err = l.matrix(p+"self_attn.v_proj.weight", c.KVDim(), H); err != nil {
				return nil, err
			}
			if aw.O, err = l.matrix(p+"self_attn.o_proj.weight", H, c.QDim()); err != nil {
				return nil, err
			}
			lw.Attn = aw
		}
		S := c.SharedIntermediate
		inName := p + "shared_mlp.input_linear.weight"
		in, err := l.mapped(inName, 2*S, H)
		if err != nil {
			return nil, err
		}
		if lw.Shared.Gate, err = l.own(inName, in.Slice(0, S)); err != nil {
			return nil, err
		}
		if lw.Shared.Up, err = l.own(inName, in.Slice(S, 2*S)); err != nil {
			return nil, err
		}
		if lw.Shared.Down, err = l.matrix(p+"shared_mlp.output_linear.weight", H, S); err != nil {
			return nil, err
		}
		if c.IsMoE() {
			E, I := c.Experts, c.Intermediate
			if lw.Router, err = l.routerMatrix(p+"block_sparse_moe.router.layer.weight", E, H); err != nil {
				return nil, err
			}
			inName, outName := p+"block_sparse_moe.input_linear.weight", p+"block_sparse_moe.output_linear.weight"
			in, err := l.mapped(inName, E*2*I, H, E, 2*I, H)
			if err != nil {
				return nil, err
			}
			out, err := l.mapped(outName, E*H, I, E, H, I)
			if err != nil {
				return nil, err
			}
			lw.Experts = make([]ExpertWeights, E)
			for e := range E {
				if l.keepExpert != nil && !l.keepExpert(i, e) {
					continue
				}
				m, err := l.expert(i, e, expertPart{inName, in, e * 2 * I, e*2*I + I}, expertPart{inName, in, e*2*I + I, (e + 1) * 2 * I},
					expertPart{outName, out, e * H, (e + 1) * H})
				if err != nil {
					return nil, err
				}
				lw.Experts[e] = ExpertWeights{Gate: m[0], Up: m[1], Down: m[2]}
			}
		}
		w.Layers = append(w.Layers, lw)
	}
	return w, nil
}

// ---------------------------------------------------------------- GGUF

type ggufSource struct {
	f     *gguf.File
	names map[string]bool
}

func newGGUFSource(f *gguf.File) ggufSource {
	s := ggufSource{f: f, names: map[string]bool{}}
	for _, ti := range f.Tensors() {
		s.names[ti.Name] = true
	}
	return s
}

func (s ggufSource) lookup(name string) (tensor.DType, []int, []byte, bool, error) {
	if !s.names[name] {
		return 0, nil, nil, false, nil
	}
	dt, shape, data, err := s.f.Tensor(name)
	if err != nil {
		return 0, nil, nil, true, err
	}
	return dt, shape, data, true, nil
}

// LoadGGUF loads a GGUF file of architecture granitehybrid.
func LoadGGUF(path string, opt LoadOptions) (*Model, *gguf.File, error) {
	if err := CheckKVDType(opt.KVDType); err != nil {
		return nil, nil, err
	}
	f, err := gguf.Open(path)
	if err != nil {
		return nil, nil, err
	}
	cfg, err := config.FromGGUF(f)
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := checkKVDTypeFor(opt.KVDType, cfg.HeadDim()); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	l := newLoader(newGGUFSource(f), path, opt)
	w, err := l.loadGGUF(cfg)
	if err != nil {
		l.closeWith(f.Close)()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	m := New(cfg, w)
	m.KVDType = opt.kvDType()
	m.closer, m.copied = l.closeWith(f.Close), l.copied()
	return m, f, nil
}

func (l *loader) loadGGUF(c *config.Config) (*Weights, error) {
	l.beginExperts(c)
	H, V := c.Hidden, c.VocabSize
	w := &Weights{}
	var err error
	if w.Embed, err = l.matrix("token_embd.weight", V, H); err != nil {
		return nil, err
	}
	if l.has("output.weight") {
		c.TieWordEmbeddings = false
		if w.Output, err = l.matrix("output.weight", V, H); err != nil {
			return nil, err
		}
	} else {
		w.Output = w.Embed
	}
	if w.FinalNorm, err = l.vector("output_norm.weight", H); err != nil {
		return nil, err
	}
	din, cd, nh, K, G := c.DInner(), c.ConvDim(), c.MambaHeads, c.MambaDConv, c.MambaGroups
	for i, lt := range c.LayerTypes {
		p := fmt.Sprintf("blk.%d.", i)
		lw := LayerWeights{Type: lt}
		if lw.InputNorm, err = l.vector(p+"attn_norm.weight", H); err != nil {
			return nil, err
		}
		if lw.PostNorm, err = l.vector(p+"ffn_norm.weight", H); err != nil {
			return nil, err
		}
		if lt == config.Mamba {
			mw := &MambaWeights{}
			if mw.InProj, err = l.matrix(p+"ssm_in.weight", c.InProjDim(), H); err != nil {
				return nil, err
			}
			if mw.ConvW, err = l.vector(p+"ssm_conv1d.weight", cd, K); err != nil {
				return nil, err
			}
			if l.has(p + "ssm_conv1d.bias") {
				if mw.ConvB, err = l.vector(p+"ssm_conv1d.bias", cd); err != nil {
					return nil, err
				}
			} else {
				mw.ConvB = make([]float32, cd)
			}
			if mw.DtBias, err = l.vector(p+"ssm_dt.bias", nh); err != nil {
				return nil, err
			}
			if mw.A, err = l.vector(p+"ssm_a", nh, 1); err != nil { // already -exp(A_log)
				return nil, err
			}
			if mw.D, err = l.vector(p+"ssm_d", nh, 1); err != nil {
				return nil, err
			}
			if mw.Norm, err = l.vector(p+"ssm_norm.weight", G, din/G); err != nil {
				return nil, err
			}
			if mw.OutProj, err = l.matrix(p+"ssm_out.weight", H, din); err != nil {
				return nil, err
			}
			lw.Mamba = mw
		} else {
			aw := &AttnWeights{}
			if aw.Q, err = l.matrix(p+"attn_q.weight", c.QDim(), H); err != nil {
				return nil, err
			}
			if aw.K, err = l.matrix(p+"attn_k.weight", c.KVDim(), H); err != nil {
				return nil, err
			}
			if aw.V, err = l.matrix(p+"attn_v.weight", c.KVDim(), H); err != nil {
				return nil, err
			}
			if aw.O, err = l.matrix(p+"attn_output.weight", H, c.QDim()); err != nil {
				return nil, err
			}
			lw.Attn = aw
		}
		if c.IsMoE() {
			E, I, S := c.Experts, c.Intermediate, c.SharedIntermediate
			if lw.Router, err = l.routerMatrix(p+"ffn_gate_inp.weight", E, H); err != nil {
				return nil, err
			}
			names := [3]string{p + "ffn_gate_exps.weight", p + "ffn_up_exps.weight", p + "ffn_down_exps.weight"}
			var stacks [3]tensor.Matrix
			for j, shape := range [3][3]int{{E, I, H}, {E, I, H}, {E, H, I}} {
				if stacks[j], err = l.mapped(names[j], shape[0]*shape[1], shape[2], shape[:]...); err != nil {
					return nil, err
				}
			}
			lw.Experts = make([]ExpertWeights, E)
			for e := range E {
				if l.keepExpert != nil && !l.keepExpert(i, e) {
					continue
				}
				m, err := l.expert(i, e, expertPart{names[0], stacks[0], e * I, (e + 1) * I},
					expertPart{names[1], stacks[1], e * I, (e + 1) * I}, expertPart{names[2], stacks[2], e * H, (e + 1) * H})
				if err != nil {
					return nil, err
				}
				lw.Experts[e] = ExpertWeights{Gate: m[0], Up: m[1], Down: m[2]}
			}
			if lw.Shared.Gate, err = l.matrix(p+"ffn_gate_shexp.weight", S, H); err != nil {
				return nil, err
			}
			if lw.Shared.Up, err = l.matrix(p+"ffn_up_shexp.weight", S, H); err != nil {
				return nil, err
			}
			if lw.Shared.Down, err = l.matrix(p+"ffn_down_shexp.weight", H, S); err != nil {
				return nil, err
			}
		} else {
			F := c.Intermediate
			if lw.Shared.Gate, err = l.matrix(p+"ffn_gate.weight", F, H); err != nil {
				return nil, err
			}
			if lw.Shared.Up, err = l.matrix(p+"ffn_up.weight", F, H); err != nil {
				return nil, err
			}
			if lw.Shared.Down, err = l.matrix(p+"ffn_down.weight", H, F); err != nil {
				return nil, err
			}
		}
		w.Layers = append(w.Layers, lw)
	}
	return w, nil
}

// IsGGUF reports whether path looks like a GGUF file (by its magic).
func IsGGUF(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	var magic [4]byte
	_, err = f.Read(magic[:])
	return err == nil && string(magic[:]) == "GGUF"
}
