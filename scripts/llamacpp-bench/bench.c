// llamacpp-bench: measures llama.cpp's CPU speed on a GGUF file the way
// `switchyard bench` measures ours, through llama.cpp's shared libraries only
// (no headers: the few functions used are declared below, and the fields of
// llama_context_params are set by word index, checked against the defaults of
// the build at run time and read back from the context).
//
//   llamacpp-bench [options] MODEL.gguf
//     -t N          threads (n_threads = n_threads_batch = N; default 1)
//     -backend SO   the CPU backend library to load (default: the best AVX-512
//                   build without AMX that loads on this CPU, from the folder
//                   of libllama: zen4, then icelake, then skylakex, then
//                   haswell)
//     -p N          prefill prompt length (default 512; n_batch = n_ubatch = N;
//                   0: no prefill test)
//     -n N          decode steps per measurement (default 16)
//     -b LIST       batched decode sizes, comma-separated (default 8,32,128;
//                   1 is the single-session decode)
//     -prompt N     tokens of each session's prompt before decoding
//                   (default 4; a long one measures decode at that context)
//     -r N          repetitions after one warm-up (default 3; the median is
//                   reported)
//     -kv TYPE      K/V cache type: f16 (llama.cpp's default), bf16 or f32
//     -fa auto|on|off  flash attention (default auto, llama.cpp's default)
//     -load MODE    how llama.cpp loads the weights: auto (its default,
//                   which maps the file here), mmap, or none (read into its
//                   own buffers, as its --no-mmap does); an explicit mode is
//                   checked against the load_mode llama.cpp logs
//
// Tests, each printed as one line
//   result engine=llama.cpp threads=N test=NAME tokens_per_s=X
// with NAME one of
//   prefill_P  one llama_decode of P random tokens into an empty context
//              (logits of the last one); tokens/s = P / time
//   decode_B   B sessions, each given a short prompt first (not timed), then
//              N steps that each decode one token of every session in one
//              llama_decode (logits for every session); tokens/s =
//              B * N / time. decode_1 is the single-session decode (tg).
//              Each repetition goes on from where the one before stopped.
//   decode_B_at_C  the same after a prompt of C tokens (-prompt C, C != 4):
//              decode at a context of C tokens.
// Tokens are random (fixed seed), as in switchyard bench.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
void llama_synchronize(void *ctx);
void *llama_get_memory(const void *ctx);
void llama_memory_clear(void *mem, _Bool data);
const void *llama_model_get_vocab(const void *model);
int32_t llama_vocab_n_tokens(const void *vocab);
uint32_t llama_n_ctx(const void *ctx);
uint32_t llama_n_batch(const void *ctx);
uint32_t llama_n_ubatch(const void *ctx);
uint32_t llama_n_seq_max(const void *ctx);
int32_t llama_n_threads(void *ctx);
int32_t llama_n_threads_batch(void *ctx);
size_t llama_max_parallel_sequences(void);
const char *llama_print_system_info(void);
typedef void (*log_fn)(int level, const char *text, void *user);
void llama_log_set(log_fn fn, void *user);

// Word indices of llama_context_params in this build (include/llama.h of
// llama.cpp 5b4ebc5): n_ctx, n_batch, n_ubatch, n_seq_max, then n_rs_seq,
// n_outputs_max, n_outputs_max_per_seq, n_threads, n_threads_batch, ctx_type,
// rope_scaling_type, pooling_type, attention_type, flash_attn_type, ... two
// pointers ..., type_k, type_v.
enum { W_M_N_GPU_LAYERS = 4, W_M_SPLIT_MODE = 5, W_M_LOAD_MODE = 6 };
enum { W_N_CTX = 0, W_N_BATCH = 1, W_N_UBATCH = 2, W_N_SEQ_MAX = 3, W_N_THREADS = 7,
	W_N_THREADS_BATCH = 8, W_FLASH_ATTN = 13, W_TYPE_K = 26, W_TYPE_V = 27 };

static int verbose;
static char kv_seen[16]; // the K cache type llama.cpp logs at context creation
static char load_seen[16]; // the load_mode llama.cpp logs when it loads tensors

// capture copies into dst (size bytes) what text holds between key and the
// next ')', if key occurs and it fits.
static void capture(const char *text, const char *key, char *dst, size_t size) {
	const char *k = strstr(text, key);
	if (!k) return;
	k += strlen(key);
	const char *e = strchr(k, ')');
	if (e && (size_t)(e - k) < size) {
		memcpy(dst, k, e - k);
		dst[e - k] = 0;
	}
}

static void on_log(int level, const char *text, void *user) {
	(void)level; (void)user;
	capture(text, "K (", kv_seen, sizeof kv_seen);
	capture(text, "load_mode = ", load_seen, sizeof load_seen);
	if (verbose) fputs(text, stderr);
}

static double now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static int32_t rand_token(int nv) {
	rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
	return (int32_t)(rng % (uint64_t)nv);
}

static int cmp_double(const void *a, const void *b) {
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static void die(const char *msg) { fprintf(stderr, "llamacpp-bench: %s\n", msg); exit(1); }

static void *new_context(void *model, int threads, uint32_t n_ctx, uint32_t n_batch, uint32_t n_ubatch,
		uint32_t n_seq, int kvt, const char *kv, int fa) {
	struct params cp = llama_context_default_params();
	if (cp.w[W_N_CTX] != 512 || cp.w[W_N_BATCH] != 2048 || cp.w[W_N_UBATCH] != 512 || cp.w[W_N_SEQ_MAX] != 1 ||
			cp.w[W_N_THREADS] != 4 || cp.w[W_N_THREADS_BATCH] != 4 || (int32_t)cp.w[W_FLASH_ATTN] != -1 ||
			cp.w[W_TYPE_K] != 1 || cp.w[W_TYPE_V] != 1)
		die("unexpected llama_context_params layout (defaults differ from llama.cpp 5b4ebc5's)");
	cp.w[W_N_CTX] = n_ctx;
	cp.w[W_N_BATCH] = n_batch;
	cp.w[W_N_UBATCH] = n_ubatch;
	cp.w[W_N_SEQ_MAX] = n_seq;
	cp.w[W_N_THREADS] = cp.w[W_N_THREADS_BATCH] = threads;
	cp.w[W_FLASH_ATTN] = fa;
	cp.w[W_TYPE_K] = cp.w[W_TYPE_V] = kvt;
	kv_seen[0] = 0;
	void *ctx = llama_init_from_model(model, cp);
	if (!ctx) die("llama_init_from_model failed");
	// Read the settings back: a wrong index would show here.
	if (llama_n_ctx(ctx) < n_ctx || llama_n_batch(ctx) != n_batch || llama_n_ubatch(ctx) != n_ubatch ||
			llama_n_seq_max(ctx) != n_seq || llama_n_threads(ctx) != threads || llama_n_threads_batch(ctx) != threads) {
		fprintf(stderr, "context has n_ctx %u n_batch %u n_ubatch %u n_seq_max %u threads %d/%d\n", llama_n_ctx(ctx),
			llama_n_batch(ctx), llama_n_ubatch(ctx), llama_n_seq_max(ctx), llama_n_threads(ctx), llama_n_threads_batch(ctx));
		die("the context does not have the settings asked for");
	}
	if (strcmp(kv_seen, kv)) {
		fprintf(stderr, "K cache type %s, asked for %s\n", kv_seen, kv);
		die("the context does not have the K/V type asked for");
	}
	return ctx;
}

static void decode(void *ctx, llama_batch b) {
	if (llama_decode(ctx, b) != 0) die("llama_decode failed");
	llama_synchronize(ctx);
}

// prefill: one llama_decode of P tokens into an empty context; seconds.
static double prefill(void *ctx, llama_batch *b, int P, int nv) {
	llama_memory_clear(llama_get_memory(ctx), 1);
	for (int i = 0; i < P; i++) {
		b->token[i] = rand_token(nv); b->pos[i] = i; b->n_seq_id[i] = 1; b->seq_id[i][0] = 0; b->logits[i] = i == P - 1;
	}
	b->n_tokens = P;
	double t0 = now();
	decode(ctx, *b);
	return now() - t0;
}

// batched: B sessions with a prompt each (given in one llama_batch of
// n_batch tokens, which llama.cpp runs in ubatches; not timed), then
// reps + 1 timed runs of N steps of one token per session, each run going on
// from where the one before stopped (as switchyard bench does: a recurrent
// state is not rolled back); t[r] gets run r's seconds (t[0]: the warm-up).
static void batched(void *ctx, llama_batch *b, int B, int prompt, int N, int nv, int reps, double *t) {
	llama_memory_clear(llama_get_memory(ctx), 1);
	int n = 0;
	for (int s = 0; s < B; s++)
		for (int i = 0; i < prompt; i++, n++) {
			b->token[n] = rand_token(nv); b->pos[n] = i; b->n_seq_id[n] = 1; b->seq_id[n][0] = s;
			b->logits[n] = i == prompt - 1;
		}
	b->n_tokens = n;
	decode(ctx, *b);
	int pos = prompt;
	for (int r = 0; r <= reps; r++) {
		double t0 = now();
		for (int step = 0; step < N; step++, pos++) {
			for (int s = 0; s < B; s++) {
				b->token[s] = rand_token(nv); b->pos[s] = pos; b->n_seq_id[s] = 1; b->seq_id[s][0] = s; b->logits[s] = 1;
			}
			b->n_tokens = B;
			decode(ctx, *b);
		}
		t[r] = now() - t0;
	}
}

static double median_of(double *x, int n) {
	qsort(x, n, sizeof *x, cmp_double);
	return x[n / 2];
}

static const char *lib_dir(void) {
	static char dir[4096];
	Dl_info info;
	if (!dladdr((void *)llama_backend_init, &info) || !info.dli_fname) return ".";
	snprintf(dir, sizeof dir, "%s", info.dli_fname);
	char *slash = strrchr(dir, '/');
	if (!slash) return ".";
	*slash = 0;
	return dir;
}

int main(int argc, char **argv) {
	int threads = 1, P = 512, N = 16, prompt = 4, reps = 3, fa = -1;
	const char *backend = NULL, *kv = "f16", *blist = "8,32,128", *fas = "auto", *load = "auto";
	int a = 1;
	for (; a < argc && argv[a][0] == '-'; a++) {
		const char *o = argv[a];
		if (!strcmp(o, "-v")) { verbose = 1; continue; }
		if (a + 1 >= argc) break;
		const char *v = argv[++a];
		if (!strcmp(o, "-t")) threads = atoi(v);
		else if (!strcmp(o, "-backend")) backend = v;
		else if (!strcmp(o, "-p")) P = atoi(v);
		else if (!strcmp(o, "-n")) N = atoi(v);
		else if (!strcmp(o, "-b")) blist = v;
		else if (!strcmp(o, "-prompt")) prompt = atoi(v);
		else if (!strcmp(o, "-r")) reps = atoi(v);
		else if (!strcmp(o, "-kv")) kv = v;
		else if (!strcmp(o, "-fa")) fas = v;
		else if (!strcmp(o, "-load")) load = v;
		else { a = argc; break; }
	}
	// ggml_type numbers: GGML_TYPE_F32 = 0, F16 = 1, BF16 = 30.
	int kvt = !strcmp(kv, "f32") ? 0 : !strcmp(kv, "f16") ? 1 : !strcmp(kv, "bf16") ? 30 : -1;
	fa = !strcmp(fas, "auto") ? -1 : !strcmp(fas, "on") ? 1 : !strcmp(fas, "off") ? 0 : -2;
	// llama_load_mode numbers of this build (llama_load_mode_name): -1 auto, 0 none, 1 mmap.
	int lm = !strcmp(load, "auto") ? -1 : !strcmp(load, "mmap") ? 1 : !strcmp(load, "none") ? 0 : -2;
	if (argc - a != 1 || threads < 1 || P < 0 || N < 1 || prompt < 1 || reps < 1 || reps > 64 || kvt < 0 || fa == -2 ||
			lm == -2) {
		fprintf(stderr, "usage: llamacpp-bench [-t N] [-backend SO] [-p N] [-n N] [-b LIST] [-prompt N] [-r N] "
			"[-kv f16|bf16|f32] [-fa auto|on|off] [-load auto|mmap|none] [-v] MODEL.gguf\n");
		return 2;
	}
	const char *model_path = argv[a];
	llama_log_set(on_log, NULL);
	llama_backend_init();
	char path[4200];
	if (backend) {
		if (!ggml_backend_load(backend)) die("cannot load the backend given with -backend");
	} else {
		static const char *best[] = {"zen4", "icelake", "skylakex", "haswell"};
		for (int i = 0; i < 4 && !backend; i++) {
			snprintf(path, sizeof path, "%s/libggml-cpu-%s.so", lib_dir(), best[i]);
			if (ggml_backend_load(path)) backend = path;
		}
		if (!backend) die("no CPU backend loads (zen4, icelake, skylakex, haswell)");
	}
	// Word 6 of llama_model_params in this build is load_mode (after two
	// pointers, n_gpu_layers = -1 and split_mode = 1; default -1, auto); the
	// defaults are checked, and the mode llama.cpp logs is compared with an
	// explicit one.
	struct params mp = llama_model_default_params();
	if ((int32_t)mp.w[W_M_N_GPU_LAYERS] != -1 || mp.w[W_M_SPLIT_MODE] != 1 || (int32_t)mp.w[W_M_LOAD_MODE] != -1)
		die("unexpected llama_model_params layout (defaults differ from llama.cpp 5b4ebc5's)");
	mp.w[W_M_LOAD_MODE] = lm;
	void *model = llama_model_load_from_file(model_path, mp);
	if (!model) die("cannot load the model");
	if (lm != -1 && strcmp(load_seen, load)) {
		fprintf(stderr, "llamacpp-bench: asked for load_mode %s, llama.cpp logged '%s'\n", load, load_seen);
		exit(1);
	}
	int nv = llama_vocab_n_tokens(llama_model_get_vocab(model));
	printf("# llama.cpp backend %s, model %s, threads %d, K/V %s, flash attention %s, load_mode %s\n# %s\n", backend,
		model_path, threads, kv, fas, load_seen, llama_print_system_info());
	fflush(stdout);

	int maxB = 1;
	for (const char *s = blist; *s;) {
		int B = atoi(s);
		if (B > maxB) maxB = B;
		s = strchr(s, ','); if (!s) break; s++;
	}
	if ((size_t)maxB > llama_max_parallel_sequences()) die("a batch size is above llama_max_parallel_sequences()");
	int cap = P > maxB * prompt ? P : maxB * prompt;
	llama_batch b = llama_batch_init(cap, 0, 1);
	double t[65];

	// (a) prefill (-p 0: none)
	if (P > 0) {
		void *ctx = new_context(model, threads, P + 256, P, P, 1, kvt, kv, fa);
		for (int r = 0; r <= reps; r++) t[r] = prefill(ctx, &b, P, nv); // t[0]: warm-up
		printf("result engine=llama.cpp threads=%d test=prefill_%d tokens_per_s=%.3f\n", threads, P, P / median_of(t + 1, reps));
		fflush(stdout);
		llama_free(ctx);
	}

	// (b), (c) decode, one session and batched; after a prompt other than
	// the default 4 tokens the test is named decode_B_at_PROMPT.
	for (const char *s = blist; *s;) {
		int B = atoi(s);
		if (B < 1) die("bad -b list");
		uint32_t per = (uint32_t)(prompt + (reps + 1) * N + 16);
		uint32_t nb = (uint32_t)(B * prompt > 512 ? B * prompt : 512);
		uint32_t nub = nb > 2048 ? 2048 : nb; // a long prompt runs in ubatches of 2048 (its compute buffers)
		uint32_t n_ctx = per * B > nb ? per * B : nb; // llama.cpp caps n_batch at n_ctx
		void *ctx = new_context(model, threads, n_ctx, nb, nub, B, kvt, kv, fa);
		batched(ctx, &b, B, prompt, N, nv, reps, t);
		char name[64];
		if (prompt == 4) snprintf(name, sizeof name, "decode_%d", B);
		else snprintf(name, sizeof name, "decode_%d_at_%d", B, prompt);
		printf("result engine=llama.cpp threads=%d test=%s tokens_per_s=%.3f\n", threads, name, (double)B * N / median_of(t + 1, reps));
		fflush(stdout);
		llama_free(ctx);
		s = strchr(s, ','); if (!s) break; s++;
	}
	llama_batch_free(b);
	return 0;
}
