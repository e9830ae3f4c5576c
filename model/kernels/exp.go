package kernels

import "math"

// Fast float32 exponential for softmax: x = k·ln2 + r with |r| ≤ ln2/2 (Cody-Waite
// split of ln2), e^r by a degree-7 Taylor polynomial (truncation error below
// 6e-9 relative), and 2^k put into the exponent bits. Results agree with
// math.Exp to about 2 ulp; inputs below -87.33 (results under the smallest
// normal float32) give 0 in Go; the assembly (expShift512/256, the same method
// on 16 or 8 lanes) clamps them to about 1.2e-38.

const (
	expLog2e  = 1.44269504088896341
	expLn2Hi  = 0.693359375 // exact in float32 (few mantissa bits)
	expLn2Lo  = -2.12194440e-4
	expMagic  = 12582912 // 1.5·2^23: adding it rounds a float32 to an integer
	expMaxArg = 88.72283
	expMinArg = -87.33654
)

// Exp returns e^x in float32 (the fast path of ExpShift, for one value).
func Exp(x float32) float32 {
	switch {
	case x != x:
		return x
	case x > expMaxArg:
		return float32(math.Inf(1))
	case x < expMinArg:
		return 0
	}
	t := x * expLog2e
	kf := (t + expMagic) - expMagic
	k := int32(kf)
	r := x - kf*expLn2Hi - kf*expLn2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040)))))))
	if k > 127 {
		return p * math.Float32frombits(127<<23+127<<23) * 2 // 2^127 · 2
	}
	return p * math.Float32frombits(uint32(k+127)<<23)
}

// ExpShift sets x[i] = e^(x[i]-m) and returns their sum (accumulated in float64).
// With m the maximum of x it is the numerator of a softmax. ExpShiftRef is its
// math.Exp twin. The assembly levels clamp x[i]-m to at most 88 (m is meant to be
// at least the maximum); NaNs propagate on every level.
func ExpShift(x []float32, m float32) float64 {
	l := KernelLevel()
	if l == LevelRef {
		return ExpShiftRef(x, m)
	}
	var s [4]float64 // four chains, so the adds do not serialise
	done := 0
	if len(x) >= 16 {
		done, s[0] = expShiftAsm(l, x, m, true)
	}
	for i, v := range x[done:] {
		d := v - m
		var e float32
		switch {
		case d < expMinArg: // also -Inf
			e = 0
		case d <= 88: // the inlined fast path; NaN and large values fall through
			t := d * expLog2e
			kf := (t + expMagic) - expMagic
			r := d - kf*expLn2Hi - kf*expLn2Lo
			p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040)))))))
			e = p * math.Float32frombits(uint32(int32(kf)+127)<<23)
		default:
			e = Exp(d)
		}
		x[done+i] = e
		s[i&3] += float64(e)
	}
	return (s[0] + s[1]) + (s[2] + s[3])
}

// SumExpShift returns Σ e^(x[i]-m) (accumulated in float64) without
// writing x: ExpShift's values and sum, for a log softmax's denominator
// (SumExpShiftRef is its twin).
func SumExpShift(x []float32, m float32) float64 {
	l := KernelLevel()
	if l == LevelRef {
		return SumExpShiftRef(x, m)
	}
	done, s := expShiftAsm(l, x, m, false)
	var t [16]float32
	for len(x[done:]) > 0 { // the tail through ExpShift's Go path, 16 at a time
		k := copy(t[:], x[done:])
		s += ExpShift(t[:k], m)
		done += k
	}
	return s
}

// SumExpShiftRef is the reference twin of SumExpShift.
func SumExpShiftRef(x []float32, m float32) float64 {
	var s float64
	for _, v := range x {
		s += float64(float32(math.Exp(float64(v - m))))
	}
	return s
}

// ExpShiftRef is the reference twin of ExpShift (math.Exp in float64).
func ExpShiftRef(x []float32, m float32) float64 {
	var s float64
	for i, v := range x {
		e := float32(math.Exp(float64(v - m)))
		x[i] = e
		s += float64(e)
	}
	return s
}

// Max returns the largest value of x (-Inf for an empty x; unspecified when x
// holds a NaN). MaxRef is its plain twin.
func Max(x []float32) float32 {
	l := KernelLevel()
	if l == LevelRef {
		return MaxRef(x)
	}
	done, m := maxAsm(l, x)
	for _, v := range x[done:] {
		if v > m {
			m = v
		}
	}
	return m
}

// MaxRef is the reference twin of Max.
func MaxRef(x []float32) float32 {
	m := float32(math.Inf(-1))
	for _, v := range x {
		if v > m {
			m = v
		}
	}
	return m
}

// SiLUMul sets dst[i] = silu(g[i])·u[i] = g[i]/(1+e^-g[i])·u[i] (the gated
// activation of the feed-forward and Mamba blocks), with the vectorised exp.
// u may be nil (dst[i] = silu(g[i])); dst may alias g or u. SiLUMulRef is its
// plain twin.
func SiLUMul(dst, g, u []float32) {
	if KernelLevel() == LevelRef {
		SiLUMulRef(dst, g, u)
		return
	}
	// The assembly does the longest multiple of its width with the same
	// operations as the loop below.
	done := siluAsm(KernelLevel(), dst, g, u)
	dst, g = dst[done:], g[done:]
	if u != nil {
		u = u[done:]
	}
	var e [512]float32
	for off := 0; off < len(g); off += len(e) {
		n := min(len(e), len(g)-off)
		gs := g[off : off+n]
		for i, v := range gs {
			e[i] = -v
		}
		ExpShift(e[:n], 0)
		d := dst[off : off+n]
		if u == nil {
			for i, v := range gs {
				d[i] = v / (1 + e[i])
			}
			continue
		}
		us := u[off : off+n]
		for i, v := range gs {
			d[i] = v / (1 + e[i]) * us[i]
		}
	}
}

// SiLUMulRef is the reference twin of SiLUMul.
func SiLUMulRef(dst, g, u []float32) {
	for i, v := range g {
		s := SiLU(v)
		if u != nil {
			s *= u[i]
		}
		dst[i] = s
	}
}
