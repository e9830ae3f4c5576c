// ggml_abi.h: the few declarations of llama.cpp's libggml-base that the
// golden-data programs here call (quant_golden.c, iq_grids.c), written out
// so that no llama.cpp headers are needed: a type's traits (the prefix of
// ggml's struct ggml_type_traits they read) and its lookup.
#ifndef SWITCHYARD_GGML_ABI_H
#define SWITCHYARD_GGML_ABI_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef void (*to_float_t)(const void *x, float *y, int64_t k);
typedef void (*from_float_t)(const float *x, void *y, int64_t k);
struct ggml_type_traits {
	const char *type_name;
	int64_t blck_size;
	int64_t blck_size_interleave;
	size_t type_size;
	bool is_quantized;
	to_float_t to_float;
	from_float_t from_float_ref;
};
const struct ggml_type_traits *ggml_get_type_traits(int type);
#endif
