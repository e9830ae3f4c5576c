// quant_golden: writes golden blocks of every ggml quantized type that
// Switchyard reads, made and decoded by llama.cpp's own ggml code.
//
// For each type it quantizes a fixed float input (4 rows x 256 values,
// made by a seeded generator, see fill_input) with ggml_quantize_chunk
// (no importance matrix, or one of all ones for the i-quants of 1 to 3 bits,
// whose quantizers need one), and also writes 4 rows of random block bytes whose
// f16 fields are set to finite values. Both byte sets are decoded with the
// type's ggml_get_type_traits(type)->to_float. Output files, in outdir:
//
//   input.f32             the float input (1024 little-endian float32)
//   <TYPE>.quant          ggml_quantize_chunk(input) bytes
//   <TYPE>.quant.f32      to_float(<TYPE>.quant)
//   <TYPE>.random         random block bytes (finite f16 fields)
//   <TYPE>.random.f32     to_float(<TYPE>.random)
//
// Build against llama.cpp's libggml-base.so (no headers needed):
//   cc -O1 -o quant_golden quant_golden.c -L$LIB -l:libggml-base.so -Wl,-rpath,$LIB
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "ggml_abi.h"
size_t ggml_quantize_chunk(int type, const float *src, void *dst, int64_t start, int64_t nrows, int64_t n_per_row, const float *imatrix);
uint16_t ggml_fp32_to_fp16(float x);

enum { ROWS = 4, COLS = 256, N = ROWS * COLS };

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t next_u64(void) { // splitmix64
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}
static double uniform(void) { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
static double normal(void) { // Box-Muller
	double u1 = uniform(), u2 = uniform();
	if (u1 < 1e-300) u1 = 1e-300;
	return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

// Row 0: N(0,1). Row 1: N(0,1)*100 with a few outliers of 20x. Row 2: N(0,1)*1e-3
// with every 7th value 0. Row 3: a constant run, a positive-only run, a
// negative-only run and a zero run of 64 each.
static void fill_input(float *x) {
	for (int i = 0; i < COLS; i++) x[i] = (float)normal();
	for (int i = 0; i < COLS; i++) x[COLS + i] = (float)(normal() * 100 * (i % 37 == 5 ? 20 : 1));
	for (int i = 0; i < COLS; i++) x[2 * COLS + i] = i % 7 == 0 ? 0 : (float)(normal() * 1e-3);
	for (int i = 0; i < COLS; i++) {
		float *y = &x[3 * COLS + i];
		switch (i / 64) {
		case 0: *y = 0.75f; break;
		case 1: *y = (float)fabs(normal()) + 0.5f; break;
		case 2: *y = -(float)fabs(normal()) - 0.25f; break;
		default: *y = 0;
		}
	}
}

struct qtype { int id; const char *name; int f16[3]; }; // byte offsets of f16 fields (-1 ends)
static const struct qtype types[] = {
	{2, "Q4_0", {0, -1}}, {3, "Q4_1", {0, 2, -1}}, {6, "Q5_0", {0, -1}}, {7, "Q5_1", {0, 2, -1}},
	{8, "Q8_0", {0, -1}}, {10, "Q2_K", {80, 82, -1}}, {11, "Q3_K", {108, -1}}, {12, "Q4_K", {0, 2, -1}},
	{13, "Q5_K", {0, 2, -1}}, {14, "Q6_K", {208, -1}}, {20, "IQ4_NL", {0, -1}}, {23, "IQ4_XS", {0, -1}},
	{39, "MXFP4", {-1}}, // its scale is an E8M0 byte: every random byte is one
	{16, "IQ2_XXS", {0, -1}}, {17, "IQ2_XS", {0, -1}}, {22, "IQ2_S", {0, -1}}, {18, "IQ3_XXS", {0, -1}},
	{21, "IQ3_S", {0, -1}}, {19, "IQ1_S", {0, -1}},
	{29, "IQ1_M", {-1}}, // its f16 scale is the top nibbles of the four u16 at 48: set_iq1m_scale
};

// needs_imatrix: the i-quants of 1 to 3 bits, whose quantizers take an
// importance matrix (the ones given are all 1: every value weighs the same).
static bool needs_imatrix(int id) { return (id >= 16 && id <= 22 && id != 20) || id == 29; }

// set_iq1m_scale writes the f16 h into an IQ1_M block's scales, 4 bits in
// the top nibble of each of its four u16.
static void set_iq1m_scale(unsigned char *blk, uint16_t h) {
	for (int k = 0; k < 4; k++) blk[48 + 2 * k + 1] = (unsigned char)((blk[48 + 2 * k + 1] & 0x0F) | ((h >> (4 * k)) & 0xF) << 4);
}

static void write_file(const char *dir, const char *name, const char *suffix, const void *p, size_t n) {
	char path[512];
	snprintf(path, sizeof path, "%s/%s%s", dir, name, suffix);
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0) { perror(path); exit(1); }
}

int main(int argc, char **argv) {
	const char *dir = argc > 1 ? argv[1] : ".";
	static float in[N], out[N], ones[COLS];
	fill_input(in);
	for (int i = 0; i < COLS; i++) ones[i] = 1;
	write_file(dir, "input", ".f32", in, sizeof in);
	for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
		const struct qtype *q = &types[t];
		const struct ggml_type_traits *tr = ggml_get_type_traits(q->id);
		if (strcasecmp(tr->type_name, q->name) != 0) { fprintf(stderr, "type %d is %s, want %s\n", q->id, tr->type_name, q->name); return 1; }
		size_t bytes = (size_t)N / tr->blck_size * tr->type_size;
		unsigned char *buf = calloc(1, bytes);
		size_t n = ggml_quantize_chunk(q->id, in, buf, 0, ROWS, COLS, needs_imatrix(q->id) ? ones : NULL);
		if (n != bytes) { fprintf(stderr, "%s: %zu bytes, want %zu\n", q->name, n, bytes); return 1; }
		tr->to_float(buf, out, N);
		write_file(dir, q->name, ".quant", buf, bytes);
		write_file(dir, q->name, ".quant.f32", out, sizeof out);
		for (size_t i = 0; i < bytes; i++) buf[i] = (unsigned char)next_u64();
		for (size_t b = 0; b < bytes / tr->type_size; b++)
			for (int k = 0; q->f16[k] >= 0; k++) {
				float v = (float)((uniform() < 0.5 ? -1 : 1) * (0.001 + uniform()));
				uint16_t h = ggml_fp32_to_fp16(v);
				memcpy(buf + b * tr->type_size + q->f16[k], &h, 2);
			}
		if (q->id == 29)
			for (size_t b = 0; b < bytes / tr->type_size; b++)
				set_iq1m_scale(buf + b * tr->type_size, ggml_fp32_to_fp16((float)((uniform() < 0.5 ? -1 : 1) * (0.001 + uniform()))));
		tr->to_float(buf, out, N);
		write_file(dir, q->name, ".random", buf, bytes);
		write_file(dir, q->name, ".random.f32", out, sizeof out);
		printf("%-6s block %3lld values %3zu bytes: %zu bytes per set\n", q->name, (long long)tr->blck_size, tr->type_size, bytes);
		free(buf);
	}
	return 0;
}
