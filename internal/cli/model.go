package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-serving/switchyard/model/engine"
	"github.com/switchyard-serving/switchyard/model/hybrid"
	"github.com/switchyard-serving/switchyard/model/kernels"
	"github.com/switchyard-serving/switchyard/model/sample"
	"github.com/switchyard-serving/switchyard/model/tokenizer"
	trunknode "github.com/switchyard-serving/switchyard/trunk-node"
)

// fitsInMemory reports whether the model's files take at most 80% of the
// memory available (the host's or the cgroup's; true where neither can be
// read): a one-shot
// command copies its weights only then, and otherwise maps them, so that a
// model larger than the machine's free memory still runs (slowly, paged
// from the file) instead of failing.
func fitsInMemory(model string) bool {
	avail := trunknode.AvailableMemory()
	return avail <= 0 || modelFileBytes(model) <= avail/5*4
}

// mmapUsage documents the --mmap flag of the commands that load a model.
const mmapUsage = "read the weight matrices through the file's memory map (page cache, shared, nothing copied at start) instead of copying them into anonymous memory with transparent huge pages (the default, as llama.cpp's --no-mmap: 14-42% faster decode, anonymous memory the size of the weights)"

func init() {
	register("generate", "generate text from a prompt with a local model", runGenerate)
	register("tokenize", "print the token ids of a text", runTokenize)
	register("detokenize", "print the text of token ids", runDetokenize)
}

// genFlags are the generation flags shared by the local and the cluster client form.
type genFlags struct {
	prompt, stop                  string
	chat, greedy, printIDs, noEOS bool
	maxTokens, topK, seed         int
	temperature, topP, minP, rep  float64
	apiToken, tlsCA               string
}

func (g *genFlags) register(fs interface {
	StringVar(*string, string, string, string)
	BoolVar(*bool, string, bool, string)
	IntVar(*int, string, int, string)
	Float64Var(*float64, string, float64, string)
}) {
	fs.StringVar(&g.prompt, "prompt", "", "prompt text (special-token text such as <|end_of_text|> is parsed)")
	fs.BoolVar(&g.chat, "chat", false, "wrap the prompt as a user turn of the model's chat template")
	fs.IntVar(&g.maxTokens, "max-tokens", 64, "maximum tokens to generate")
	fs.Float64Var(&g.temperature, "temperature", 0.8, "sampling temperature (0 = greedy)")
	fs.Float64Var(&g.topP, "top-p", 0.95, "nucleus sampling threshold in (0,1]")
	fs.IntVar(&g.topK, "top-k", 40, "sample among the k most likely tokens (0 = off)")
	fs.Float64Var(&g.minP, "min-p", 0.05, "drop tokens below min-p x the top probability (0 = off)")
	fs.Float64Var(&g.rep, "repetition-penalty", 1, "penalty for tokens already in the context (1 = off)")
	fs.IntVar(&g.seed, "seed", 0, "sampling seed (same seed, same output)")
	fs.BoolVar(&g.greedy, "greedy", false, "always take the most likely token")
	fs.BoolVar(&g.printIDs, "print-ids", false, "print generated token ids instead of text")
	fs.BoolVar(&g.noEOS, "ignore-eos", false, "do not stop at the end-of-text token")
	fs.StringVar(&g.stop, "stop", "", "comma-separated stop strings")
}

// registerClient adds the cluster-client flags of `generate --addr`.
func (g *genFlags) registerClient(fs *flag.FlagSet) {
	fs.StringVar(&g.apiToken, "api-token", os.Getenv("SWITCHYARD_API_TOKEN"), "bearer token for the public API (default $SWITCHYARD_API_TOKEN)")
	fs.StringVar(&g.tlsCA, "tls-ca", "", "CA bundle to verify the public API's TLS certificate (enables TLS)")
}

func (g *genFlags) params() sample.Params {
	p := sample.Params{Temperature: float32(g.temperature), TopK: g.topK, TopP: float32(g.topP), MinP: float32(g.minP),
		RepetitionPenalty: float32(g.rep), Seed: uint64(g.seed)}
	if g.greedy {
		p.Temperature = 0
	}
	return p
}

func (g *genFlags) stops() []string {
	if g.stop == "" {
		return nil
	}
	return strings.Split(g.stop, ",")
}

func runGenerate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("generate", stderr)
	var g genFlags
	g.register(fs)
	g.registerClient(fs)
	model := fs.String("model", "", "model: Hugging Face folder or .gguf file (local mode)")
	addr := fs.String("addr", "", "generate through a cluster's public API at HOST:PORT instead of a local model")
	threads := fs.Int("threads", 0, "compute threads (0 = all cores)")
	stats := fs.Bool("stats", false, "print timing to stderr")
	kvDType := kvDTypeFlag(fs)
	mmap := fs.Bool("mmap", false, mmapUsage)
	if err := parse(fs, args); err != nil {
		return err
	}
	if g.prompt == "" {
		return fmt.Errorf("--prompt is required")
	}
	if *addr != "" {
		if *model != "" {
			return fmt.Errorf("--addr and --model are mutually exclusive")
		}
		return generateRemote(ctx, *addr, &g, stdout)
	}
	if *model == "" {
		return fmt.Errorf("--model (local) or --addr (cluster) is required")
	}
	if *threads > 0 {
		kernels.SetThreads(*threads)
	}
	t0 := time.Now()
	copyWeights := !*mmap
	if copyWeights && !fitsInMemory(*model) {
		fmt.Fprintf(stderr, "generate: %s is more than 80%% of the available memory: reading the weights through the file's map instead of copying them (--mmap)\n", *model)
		copyWeights = false
	}
	e, err := engine.Open(*model, hybrid.LoadOptions{KVDType: *kvDType, NoMmap: copyWeights})
	if err != nil {
		return err
	}
	defer e.Close()
	ids := e.Tok.Encode(g.prompt, true)
	if g.chat {
		if ids, err = e.Tok.EncodeChat([]tokenizer.Message{{Role: "user", Content: g.prompt}}, true); err != nil {
			return err
		}
	}
	req := engine.Request{Prompt: ids, Params: g.params(), MaxTokens: g.maxTokens, StopStrings: g.stops(), IgnoreEOS: g.noEOS}
	loaded := time.Now()
	var first time.Time
	sep := ""
	res, err := e.Generate(e.Model.NewState(), req, func(ev engine.Event) bool {
		if first.IsZero() {
			first = time.Now()
		}
		if g.printIDs {
			if ev.Token >= 0 {
				fmt.Fprintf(stdout, "%s%d", sep, ev.Token)
				sep = " "
			}
		} else {
			io.WriteString(stdout, ev.Text)
		}
		return ctx.Err() == nil
	})
	fmt.Fprintln(stdout)
	if err != nil {
		return err
	}
	if *stats {
		end := time.Now()
		n := len(res.Tokens)
		fmt.Fprintf(stderr, "load %.2fs, prompt %d tokens (%.1f tok/s), generated %d tokens (%.2f tok/s), finish %s\n",
			loaded.Sub(t0).Seconds(), len(ids), float64(len(ids))/first.Sub(loaded).Seconds(), n,
			float64(max(n-1, 0))/end.Sub(first).Seconds(), res.FinishReason)
	}
	return nil
}

func runTokenize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tokenize", stderr)
	model := fs.String("model", "", "HF model folder, tokenizer.json, or .gguf file (required)")
	text := fs.String("text", "", "text to tokenize (or read from stdin when empty)")
	special := fs.Bool("special", true, "parse special-token text (e.g. <|end_of_text|>) as special tokens")
	if err := parse(fs, args); err != nil {
		return err
	}
	tok, err := engine.OpenTokenizer(*model)
	if err != nil {
		return err
	}
	in := *text
	if in == "" {
		b, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		in = string(b)
	}
	ids := tok.Encode(in, *special)
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.Itoa(id)
	}
	fmt.Fprintln(stdout, strings.Join(parts, " "))
	return nil
}

func runDetokenize(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("detokenize", stderr)
	model := fs.String("model", "", "HF model folder, tokenizer.json, or .gguf file (required)")
	idsFlag := fs.String("ids", "", "token ids separated by spaces or commas")
	if err := parse(fs, args); err != nil {
		return err
	}
	tok, err := engine.OpenTokenizer(*model)
	if err != nil {
		return err
	}
	var ids []int
	for _, f := range strings.FieldsFunc(*idsFlag, func(r rune) bool { return r == ' ' || r == ',' || r == '[' || r == ']' }) {
		id, err := strconv.Atoi(f)
		if err != nil {
			return fmt.Errorf("--ids: %q is not an integer", f)
		}
		ids = append(ids, id)
	}
	s, err := tok.DecodeChecked(ids)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, s)
	return nil
}
