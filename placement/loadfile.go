package placement

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// ParseLoad reads per-(layer, expert) loads, [layer][expert], in one of two
// formats:
//
//   - JSON: {"layers": [[load of expert 0, expert 1, ...], ...]}, one array
//     per layer, all the same length.
//   - CSV: rows "layer,expert,load" with 0-based indices, in any order. A
//     first row whose first field is not a number is a header; blank lines
//     and lines starting with # are skipped. Pairs not listed get load 0;
//     the shape is the largest indices plus one.
//
// format is "json", "csv", or "" to decide by the first non-blank byte ('{'
// means JSON). Loads must be finite and non-negative; their unit is free
// (activation counts, tokens per second): only ratios within a layer matter.
func ParseLoad(r io.Reader, format string) ([][]float64, error) {
	br := bufio.NewReader(r)
	switch strings.ToLower(format) {
	case "":
		first, err := firstByte(br)
		if err != nil {
			return nil, err
		}
		if first == '{' {
			return parseLoadJSON(br)
		}
		return parseLoadCSV(br)
	case "json":
		return parseLoadJSON(br)
	case "csv":
		return parseLoadCSV(br)
	}
	return nil, fmt.Errorf("placement: load format %q: want json or csv", format)
}

// firstByte peeks at the first byte of br that is not blank (or part of a
// UTF-8 byte order mark).
func firstByte(br *bufio.Reader) (byte, error) {
	for n := 1; ; n++ {
		b, err := br.Peek(n)
		if len(b) < n {
			if err == nil || errors.Is(err, io.EOF) {
				return 0, errors.New("placement: empty load file")
			}
			return 0, fmt.Errorf("placement: reading load file: %w", err)
		}
		switch c := b[n-1]; c {
		case ' ', '\t', '\r', '\n', 0xef, 0xbb, 0xbf:
		default:
			return c, nil
		}
	}
}

func parseLoadJSON(r io.Reader) ([][]float64, error) {
	var doc struct {
		Layers [][]float64 `json:"layers"`
	}
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("placement: load JSON: %w", err)
	}
	if len(doc.Layers) == 0 || len(doc.Layers[0]) == 0 {
		return nil, errors.New(`placement: load JSON: want {"layers": [[...loads of each expert...], ...]} with at least one layer and expert`)
	}
	for l, row := range doc.Layers {
		if len(row) != len(doc.Layers[0]) {
			return nil, fmt.Errorf("placement: load JSON: layer %d has %d experts, layer 0 has %d", l, len(row), len(doc.Layers[0]))
		}
		for e, v := range row {
			if err := checkLoad(v); err != nil {
				return nil, fmt.Errorf("placement: load JSON: layer %d expert %d: %w", l, e, err)
			}
		}
	}
	return doc.Layers, nil
}

func parseLoadCSV(r io.Reader) ([][]float64, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.FieldsPerRecord = 3
	cr.TrimLeadingSpace = true
	type entry struct {
		l, e int
		v    float64
	}
	var rows []entry
	layers, experts := 0, 0
	for first := true; ; first = false {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("placement: load CSV: %w", err)
		}
		line, _ := cr.FieldPos(0)
		l, errL := strconv.Atoi(strings.TrimSpace(rec[0]))
		if first && errL != nil {
			continue // header
		}
		e, errE := strconv.Atoi(strings.TrimSpace(rec[1]))
		v, errV := strconv.ParseFloat(strings.TrimSpace(rec[2]), 64)
		switch {
		case errL != nil || errE != nil || l < 0 || e < 0:
			return nil, fmt.Errorf("placement: load CSV line %d: want layer,expert,load with non-negative integer indices, got %q", line, rec)
		case errV != nil:
			return nil, fmt.Errorf("placement: load CSV line %d: load %q is not a number", line, rec[2])
		}
		if err := checkLoad(v); err != nil {
			return nil, fmt.Errorf("placement: load CSV line %d: %w", line, err)
		}
		rows = append(rows, entry{l, e, v})
		layers, experts = max(layers, l+1), max(experts, e+1)
	}
	if len(rows) == 0 {
		return nil, errors.New("placement: load CSV: no layer,expert,load rows")
	}
	if layers*experts > 1<<24 {
		return nil, fmt.Errorf("placement: load CSV: %d layers x %d experts is implausibly large", layers, experts)
	}
	load := make([][]float64, layers)
	seen := make([][]bool, layers)
	for l := range load {
		load[l] = make([]float64, experts)
		seen[l] = make([]bool, experts)
	}
	for _, r := range rows {
		if seen[r.l][r.e] {
			return nil, fmt.Errorf("placement: load CSV: layer %d expert %d listed twice", r.l, r.e)
		}
		seen[r.l][r.e] = true
		load[r.l][r.e] = r.v
	}
	return load, nil
}

func checkLoad(v float64) error {
	if v < 0 || math.IsNaN(v) || math.IsInf(v, 0) {
		return fmt.Errorf("load %v, want finite and >= 0", v)
	}
	return nil
}
