// logits [-kv f32|f16|bf16|q8_0] [-fa] [-greedy N] MODEL BACKEND_SO < prompts:
// evaluates each prompt (a line of token ids) with llama.cpp in one
// llama_decode call, logits for every position, and prints them as JSON.
// CPU only, 1 thread, flash attention off and an F32 K/V cache unless -fa and
// -kv say otherwise (the K/V type llama.cpp reports at context creation is
// checked against the one asked for). The CPU backend variant is loaded
// explicitly (BACKEND_SO).
//
// Without -greedy the output is [prompt][position][vocab]. With -greedy N each
// prompt is an object: {"logits": [position][vocab], "greedy": [N token ids],
// "greedy_logits": [N][vocab]}: from the state after the prompt, N tokens by
// argmax (first maximum), each fed back with its own llama_decode;
// greedy_logits[i] are the logits greedy[i] was chosen from.
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
void llama_batch_free(llama_batch b);
int32_t llama_decode(void *ctx, llama_batch b);
float *llama_get_logits_ith(void *ctx, int32_t i);
const void *llama_model_get_vocab(const void *model);
int32_t llama_vocab_n_tokens(const void *vocab);
typedef void (*log_fn)(int level, const char *text, void *user);
void llama_log_set(log_fn fn, void *user);

// The K cache type llama.cpp logs when it creates a context ("K (bf16)").
static char kv_seen[16];

static void on_log(int level, const char *text, void *user) {
	(void)level; (void)user;
	const char *k = strstr(text, "K (");
	if (k) {
		const char *e = strchr(k + 3, ')');
		if (e && e - (k + 3) < (long)sizeof kv_seen) {
			memcpy(kv_seen, k + 3, e - (k + 3));
			kv_seen[e - (k + 3)] = 0;
		}
	}
	fputs(text, stderr);
}

static void print_row(const float *l, int nv) {
	printf("[");
	for (int v = 0; v < nv; v++) printf("%s%.9g", v ? "," : "", l[v]);
	printf("]");
}

int main(int argc, char **argv) {
	const char *kv = "f32";
	int fa = 0, greedy = 0, a = 1;
	for (; a < argc && argv[a][0] == '-'; a++) {
		if (!strcmp(argv[a], "-kv") && a + 1 < argc) kv = argv[++a];
		else if (!strcmp(argv[a], "-fa")) fa = 1;
		else if (!strcmp(argv[a], "-greedy") && a + 1 < argc) greedy = atoi(argv[++a]);
		else break;
	}
	// ggml_type numbers: GGML_TYPE_F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30
	// (a quantized V cache needs -fa).
	int kvt = !strcmp(kv, "f32") ? 0 : !strcmp(kv, "f16") ? 1 : !strcmp(kv, "bf16") ? 30 : !strcmp(kv, "q8_0") ? 8 : -1;
	if (argc - a != 2 || kvt < 0 || greedy < 0) {
		fprintf(stderr, "usage: logits [-kv f32|f16|bf16|q8_0] [-fa] [-greedy N] MODEL BACKEND_SO < prompts\n");
		return 2;
	}
	llama_log_set(on_log, NULL);
	llama_backend_init();
	if (!ggml_backend_load(argv[a + 1])) { fprintf(stderr, "cannot load %s\n", argv[a + 1]); return 1; }
	void *model = llama_model_load_from_file(argv[a], llama_model_default_params());
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
		cp.w[13] = fa;                            // flash_attn_type: 0 disabled, 1 enabled
		cp.w[26] = cp.w[27] = kvt;                // type_k, type_v
		kv_seen[0] = 0;
		void *ctx = llama_init_from_model(model, cp);
		if (!ctx) return 1;
		if (strcmp(kv_seen, kv)) {
			fprintf(stderr, "llama.cpp made a K cache of type %s, asked for %s\n", kv_seen, kv); return 1;
		}
		llama_batch b = llama_batch_init(n, 0, 1);
		for (int i = 0; i < n; i++) {
			b.token[i] = toks[i]; b.pos[i] = i; b.n_seq_id[i] = 1; b.seq_id[i][0] = 0; b.logits[i] = 1;
		}
		b.n_tokens = n;
		if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
		printf("%s\n%s[", p ? "," : "", greedy ? "{\"logits\": " : "");
		for (int i = 0; i < n; i++) {
			printf("%s", i ? ",\n" : "");
			print_row(llama_get_logits_ith(ctx, i), nv);
		}
		printf("]");
		if (greedy) {
			int32_t out[4096];
			float *l = llama_get_logits_ith(ctx, n - 1);
			printf(",\n\"greedy_logits\": [");
			for (int s = 0; s < greedy; s++) {
				int best = 0;
				for (int v = 1; v < nv; v++) if (l[v] > l[best]) best = v;
				out[s] = best;
				printf("%s", s ? ",\n" : "");
				print_row(l, nv);
				b.n_tokens = 1;
				b.token[0] = best; b.pos[0] = n + s; b.n_seq_id[0] = 1; b.seq_id[0][0] = 0; b.logits[0] = 1;
				if (llama_decode(ctx, b) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
				l = llama_get_logits_ith(ctx, 0);
			}
			printf("],\n\"greedy\": [");
			for (int s = 0; s < greedy; s++) printf("%s%d", s ? "," : "", out[s]);
			printf("]}");
		}
		llama_batch_free(b);
		llama_free(ctx);
	}
	printf("]\n");
	return 0;
}
