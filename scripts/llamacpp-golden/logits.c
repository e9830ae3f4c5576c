// logits MODEL BACKEND_SO < prompts: evaluates each prompt (a line of token
// ids) with llama.cpp in one llama_decode call, logits for every position,
// and prints them as JSON. CPU only, 1 thread, F32 K/V cache, flash
// attention off. The CPU backend variant is loaded explicitly (BACKEND_SO).
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct params { uint32_t w[256]; };
typedef struct llama_batch {
	int32_t n_tokens;
	int32_t *token;
	float *embd;
	int32_t *pos;
	int32_t *n_seq_id;
	int32_t **seq_id;
	int8_t *logits;
} llama_batch;
void llama_backend_init(void);
void *ggml_backend_load(const char *path);
struct params llama_model_default_params(void);
struct params llama_context_default_params(void);
void *llama_model_load_from_file(const char *path, struct params p);
void *llama_init_from_model(void *model, struct params p);
void llama_free(void *ctx);
llama_batch llama_batch_init(int32_t n, int32_t embd, int32_t n_seq_max);
int32_t llama_decode(void *ctx, llama_batch b);
float *llama_get_logits_ith(void *ctx, int32_t i);
const void *llama_model_get_vocab(const void *model);
int32_t llama_vocab_n_tokens(const void *vocab);

int main(int argc, char **argv) {
	if (argc != 3) { fprintf(stderr, "usage: logits MODEL BACKEND_SO < prompts\n"); return 2; }
	llama_backend_init();
	if (!ggml_backend_load(argv[2])) { fprintf(stderr, "cannot load %s\n", argv[2]); return 1; }
	void *model = llama_model_load_from_file(argv[1], llama_model_default_params());
	if (!model) return 1;
	int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
	char line[65536];
	printf("[");
	for (int p = 0; fgets(line, sizeof line, stdin); p++) {
		int32_t toks[4096]; int n = 0;
		for (char *s = strtok(line, " \n"); s; s = strtok(NULL, " \n")) toks[n++] = atoi(s);
		struct params cp = llama_context_default_params();
		// indices checked against the defaults of this build (see README)
		if (cp.w[0] != 512 || cp.w[7] != 4 || cp.w[8] != 4 || (int32_t)cp.w[13] != -1 || cp.w[26] != 1 || cp.w[27] != 1) {
			fprintf(stderr, "unexpected llama_context_params layout\n"); return 1;
		}
		cp.w[0] = 512; cp.w[1] = cp.w[2] = 512;   // n_ctx, n_batch, n_ubatch
		cp.w[7] = cp.w[8] = 1;                    // n_threads, n_threads_batch
		cp.w[13] = 0;                             // flash_attn_type disabled
		cp.w[26] = cp.w[27] = 0;                  // type_k, type_v = F32
		void *ctx = llama_init_from_model(model, cp);
		if (!ctx) return 1;
		llama_batch b = llama_batch_init(n, 0, 1);
		for (int i = 0; i < n; i++) {
			b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
		}
		b.n_tokens = n;
		if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
		printf("%s\n[", p ? "," : "");
		for (int i = 0; i < n; i++) {
			float *l = llama_get_logits_ith(ctx, i);
			printf("%s[", i ? ",\n" : "");
			for (int v = 0; v < nv; v++) printf("%s%.9g", v ? "," : "", l[v]);
			printf("]");
		}
		printf("]");
		llama_free(ctx);
	}
	printf("]\n");
	return 0;
}
