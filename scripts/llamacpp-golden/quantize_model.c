// quantize_model IN OUT FTYPE [pure]: runs llama.cpp's llama_model_quantize
// (the code behind llama-quantize) with default parameters and the given
// llama_ftype number (15 = Q4_K_M, 17 = Q5_K_M), single-threaded. FTYPE 0
// (all F32) sets allow_requantize, which dequantizes a quantized model with
// llama.cpp's own to_float. "pure" sets the parameter of that name
// (llama-quantize --pure: every matrix of the file type, no mix).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
struct qparams { int32_t nthread; int32_t ftype; unsigned char rest[504]; }; // oversized on purpose
struct qparams llama_model_quantize_default_params(void);
uint32_t llama_model_quantize(const char *in, const char *out, const struct qparams *p);
void llama_backend_init(void);
int main(int argc, char **argv) {
	if (argc != 4 && argc != 5) { fprintf(stderr, "usage: quantize_model IN OUT FTYPE [pure]\n"); return 2; }
	llama_backend_init();
	struct qparams p = llama_model_quantize_default_params();
	if (p.ftype != 7) { fprintf(stderr, "unexpected default ftype %d (layout changed?)\n", p.ftype); return 1; }
	p.nthread = 1;
	p.ftype = atoi(argv[3]);
	if (p.ftype == 0) p.rest[8] = 1; // allow_requantize (byte 16 of the struct)
	if (argc == 5) p.rest[11] = 1;    // pure (byte 19)
	return (int)llama_model_quantize(argv[1], argv[2], &p);
}
