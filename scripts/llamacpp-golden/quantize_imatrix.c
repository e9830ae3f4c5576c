// quantize_imatrix IN OUT FTYPE: llama_model_quantize (the code behind
// llama-quantize) as quantize_model.c runs it, with an importance matrix of
// all ones (every column weighs the same) for every matrix of IN, which
// llama.cpp requires for its i-quants of 1 to 3 bits (IQ2_XXS ... IQ3_S,
// IQ1_S, IQ1_M). The matrix is passed as llama.h's array of
// llama_model_imatrix_data {name, data, size} (size = ne[0]·ne[2]), ended by
// an entry whose name is NULL. Single-threaded.
//
// Build against llama.cpp's libllama and libggml-base (no headers needed):
//   cc -O1 -o quantize_imatrix quantize_imatrix.c -L$LIB -l:libllama.v0.4.0.so -l:libggml-base.so -Wl,-rpath,$LIB
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct qparams { int32_t nthread; int32_t ftype; unsigned char rest[504]; }; // oversized on purpose
struct qparams llama_model_quantize_default_params(void);
uint32_t llama_model_quantize(const char *in, const char *out, const struct qparams *p);
void llama_backend_init(void);
struct gguf_init_params { bool no_alloc; void **ctx; };
void *gguf_init_from_file(const char *fname, struct gguf_init_params params);
int64_t gguf_get_n_tensors(const void *ctx);
const char *gguf_get_tensor_name(const void *ctx, int64_t id);
void *ggml_get_tensor(void *ctx, const char *name);

struct imatrix_data { const char *name; const float *data; size_t size; };

// ggml_tensor begins with its type (4 bytes, padded to 8), its buffer
// pointer and then ne[4] (int64, ggml order).
static const int64_t *tensor_ne(void *t) { return (const int64_t *)((char *)t + 16); }

int main(int argc, char **argv) {
	if (argc != 4) { fprintf(stderr, "usage: quantize_imatrix IN OUT FTYPE\n"); return 2; }
	llama_backend_init();
	void *gctx = NULL;
	void *g = gguf_init_from_file(argv[1], (struct gguf_init_params){true, &gctx});
	if (!g) { fprintf(stderr, "%s: cannot read\n", argv[1]); return 1; }
	int64_t n = gguf_get_n_tensors(g), m = 0;
	struct imatrix_data *im = calloc((size_t)n + 1, sizeof *im);
	if (!im) { perror("calloc"); return 1; }
	for (int64_t i = 0; i < n; i++) {
		const char *name = gguf_get_tensor_name(g, i);
		const int64_t *ne = tensor_ne(ggml_get_tensor(gctx, name));
		if (ne[1] <= 1) continue; // vectors are not quantized
		size_t size = (size_t)(ne[0] * (ne[2] > 0 ? ne[2] : 1));
		float *ones = malloc(size * sizeof *ones);
		if (!ones) { perror("malloc"); return 1; }
		for (size_t k = 0; k < size; k++) ones[k] = 1;
		im[m++] = (struct imatrix_data){name, ones, size};
	}
	struct qparams p = llama_model_quantize_default_params();
	if (p.ftype != 7) { fprintf(stderr, "unexpected default ftype %d (layout changed?)\n", p.ftype); return 1; }
	void *none = NULL;
	if (memcmp(p.rest + 16, &none, sizeof none) != 0) { fprintf(stderr, "imatrix field not null by default (layout changed?)\n"); return 1; }
	p.nthread = 1;
	p.ftype = atoi(argv[3]);
	memcpy(p.rest + 16, &im, sizeof im); // imatrix: the pointer at byte 24 of the struct
	return (int)llama_model_quantize(argv[1], argv[2], &p);
}
