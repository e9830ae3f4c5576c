package helmtest

import (
	"context"
	"debug/elf"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// There is no Docker engine where these tests run, so the Dockerfile is
// checked statically with BuildKit's own parser, and its build stage command is
// run with plain `go build` on exactly the files the .dockerignore'd build
// context would hold.

type instruction struct {
	cmd   string   // lower case: from, run, copy, ...
	args  []string // words after the instruction
	flags []string // --from=..., --mount=..., --platform=...
	json  bool     // exec (JSON array) form
	line  string
}

type stage struct {
	from, name string
	body       []instruction
}

func parseDockerfile(t *testing.T) (globalArgs []instruction, stages []stage) {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("Dockerfile does not parse: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile: %s", w.Short)
	}
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToLower(n.Value), flags: n.Flags, json: n.Attributes["json"], line: n.Original}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		if in.cmd == "from" {
			s := stage{from: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "as") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "arg" {
				t.Errorf("Dockerfile: %q before the first FROM", in.line)
			}
			globalArgs = append(globalArgs, in)
			continue
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
	}
	return globalArgs, stages
}

func TestDockerfile(t *testing.T) {
	global, stages := parseDockerfile(t)
	if len(stages) != 4 {
		t.Fatalf("want the build, build-cuda, cuda and (last, the default) runtime stages, got %d stages", len(stages))
	}
	build, final := stages[0], stages[3]
	if stages[1].name != "build-cuda" || stages[1].from != "build" || stages[2].name != "cuda" || stages[2].from != "${CUDA_BASE}" {
		t.Errorf("stages 2 and 3: FROM %s AS %s, FROM %s AS %s; want FROM build AS build-cuda, FROM ${CUDA_BASE} AS cuda",
			stages[1].from, stages[1].name, stages[2].from, stages[2].name)
	}
	checkCUDAStages(t, global, stages[1], stages[2])

	goVersion := ""
	for _, a := range global {
		if v, ok := strings.CutPrefix(a.args[0], "GO_VERSION="); ok {
			goVersion = v
		}
	}
	if build.from != "golang:${GO_VERSION}" || !strings.HasPrefix(goVersion, "1.26") || build.name != "build" {
		t.Errorf("build stage: FROM %s AS %s with GO_VERSION=%s; want golang:1.26 AS build", build.from, build.name, goVersion)
	}
	var buildCmd string
	for _, in := range build.body {
		if in.cmd == "run" && strings.Contains(strings.Join(in.args, " "), "go build") {
			buildCmd = strings.Join(in.args, " ")
		}
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", `-ldflags="-s -w `, "telemetry.version=${VERSION}", "telemetry.revision=${REVISION}", "-o /out/switchyard", "./cmd/switchyard"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("build stage: the go build command %q lacks %s", buildCmd, want)
		}
	}

	if final.from != "gcr.io/distroless/static:nonroot" && final.from != "scratch" {
		t.Errorf("runtime stage: FROM %s; want gcr.io/distroless/static:nonroot or scratch", final.from)
	}
	checkRuntimeStage(t, "runtime", final, "build")
}

// checkRuntimeStage: a runtime stage runs /switchyard (exec form) as 65532,
// holds only the binary copied from the build stage from, and runs nothing.
func checkRuntimeStage(t *testing.T, label string, s stage, from string) {
	t.Helper()
	var user string
	var entrypoint *instruction
	var copies []instruction
	for _, in := range s.body {
		switch in.cmd {
		case "user":
			user = in.args[0]
		case "entrypoint":
			entrypoint = &in
		case "copy", "add":
			copies = append(copies, in)
		case "run":
			t.Errorf("%s stage: RUN %q (a runtime image holds the binary alone)", label, in.line)
		}
	}
	if user != "65532" && user != "65532:65532" {
		t.Errorf("%s stage: USER %q, want 65532 (numeric, so runAsNonRoot can verify it)", label, user)
	}
	if entrypoint == nil || !entrypoint.json || !slices.Equal(entrypoint.args, []string{"/switchyard"}) {
		t.Errorf("%s stage: want ENTRYPOINT [\"/switchyard\"] (exec form), got %+v", label, entrypoint)
	}
	if len(copies) != 1 || copies[0].cmd != "copy" || !slices.Contains(copies[0].flags, "--from="+from) ||
		!slices.Equal(copies[0].args, []string{"/out/switchyard", "/switchyard"}) {
		t.Errorf("%s stage: want only COPY --from=%s /out/switchyard /switchyard, got %+v", label, from, copies)
	}
}

// checkCUDAStages: the GPU image builds the same program with -tags cuda and
// runs it as 65532 on a CUDA 13 runtime base.
func checkCUDAStages(t *testing.T, global []instruction, build, run stage) {
	t.Helper()
	base := ""
	for _, a := range global {
		if v, ok := strings.CutPrefix(a.args[0], "CUDA_BASE="); ok {
			base = v
		}
	}
	if !strings.HasPrefix(base, "nvidia/cuda:13.") || !strings.Contains(base, "-runtime-") {
		t.Errorf("CUDA_BASE=%q, want an nvidia/cuda:13.x runtime image (cuBLAS 13 included)", base)
	}
	cmd := goBuildCommand(build)
	for _, want := range []string{"CGO_ENABLED=0", "-tags cuda", "-trimpath", `-ldflags="-s -w `, "telemetry.version=${VERSION}", "telemetry.revision=${REVISION}", "-o /out/switchyard", "./cmd/switchyard"} {
		if !strings.Contains(cmd, want) {
			t.Errorf("build-cuda stage: the go build command %q lacks %s", cmd, want)
		}
	}
	checkRuntimeStage(t, "cuda", run, "build-cuda")
}

func goBuildCommand(s stage) string {
	for _, in := range s.body {
		if in.cmd == "run" && strings.Contains(strings.Join(in.args, " "), "go build") {
			return strings.Join(in.args, " ")
		}
	}
	return ""
}

// TestDockerBuildStage builds the binary the way the Dockerfile's build stage
// does, from a copy of the build context that .dockerignore leaves, and checks
// that the result is a static executable.
func TestDockerBuildStage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	_, stages := parseDockerfile(t)
	buildCmd := goBuildCommand(stages[0])
	if buildCmd == "" || len(stages) < 2 {
		t.Fatal("no go build command in the build stage")
	}

	ctxDir := t.TempDir()
	files := copyBuildContext(t, ctxDir)
	for _, need := range []string{"go.mod", "go.sum", "cmd/switchyard/main.go"} {
		if !files[need] {
			t.Errorf(".dockerignore excludes %s", need)
		}
	}
	for f := range files {
		for _, bad := range []string{".git/", "bin/", "deploy/", ".ci/"} {
			if strings.HasPrefix(f, bad) {
				t.Errorf("build context holds %s (.dockerignore should exclude %s)", f, bad)
			}
		}
		if strings.HasSuffix(f, ".test") || strings.HasSuffix(f, ".gguf") || strings.HasSuffix(f, ".safetensors") {
			t.Errorf("build context holds %s", f)
		}
	}

	out := t.TempDir()
	cmdline := strings.ReplaceAll(buildCmd, "/out/", out+"/")
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", cmdline)
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH, "GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, b)
	}
	bin := filepath.Join(out, "switchyard")
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer ef.Close()
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a dynamic loader: not a static binary", bin)
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("%s links shared libraries %v", bin, libs)
	}
	if ef.Section(".symtab") != nil {
		t.Errorf("%s has a symbol table: -ldflags=-s did not apply", bin)
	}
	if b, err := exec.Command(bin, "help").CombinedOutput(); err != nil || !strings.Contains(string(b), "trunk") {
		t.Errorf("%s help: %v\n%s", bin, err, b)
	}
	// The static binary refuses a GPU device with one line saying why.
	if b, err := exec.Command(bin, "bench-gpu", "--device", "cuda:0").CombinedOutput(); err == nil || !strings.Contains(string(b), "built without GPU support") {
		t.Errorf("%s bench-gpu --device cuda:0: %v\n%s", bin, err, b)
	}

	// The GPU image's build: the same program, dynamically linked against glibc
	// alone (the CUDA libraries are opened at run time, never linked).
	cudaCmd := goBuildCommand(stages[1])
	cudaOut := t.TempDir()
	cmd = exec.CommandContext(ctx, "sh", "-c", strings.ReplaceAll(cudaCmd, "/out/", cudaOut+"/"))
	cmd.Dir = ctxDir
	cmd.Env = append(os.Environ(), "TARGETOS="+runtime.GOOS, "TARGETARCH="+runtime.GOARCH, "GOFLAGS=-mod=readonly", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", cudaCmd, err, b)
	}
	cbin := filepath.Join(cudaOut, "switchyard")
	cf, err := elf.Open(cbin)
	if err != nil {
		t.Fatal(err)
	}
	defer cf.Close()
	libs, _ := cf.ImportedLibraries()
	for _, l := range libs {
		if !strings.HasPrefix(l, "libc.so") && !strings.HasPrefix(l, "libdl.so") && !strings.HasPrefix(l, "libpthread.so") {
			t.Errorf("%s links %s; the GPU build may link only glibc", cbin, l)
		}
	}
	// Without a GPU driver, --device cuda fails at once with one line naming what is missing.
	b, err := exec.Command(cbin, "bench-gpu", "--device", "cuda:0").CombinedOutput()
	if err == nil || !strings.Contains(string(b), "libcuda.so.1") {
		t.Errorf("%s bench-gpu --device cuda:0 without a driver: %v\n%s", cbin, err, b)
	}
}

// copyBuildContext copies the repository files that survive .dockerignore
// (with BuildKit's own pattern matcher) into dst and returns their paths.
func copyBuildContext(t *testing.T, dst string) map[string]bool {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]bool{}
	err = filepath.WalkDir(repoRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(repoRoot, path)
		if err != nil || rel == "." {
			return err
		}
		rel = filepath.ToSlash(rel)
		skip, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		if skip {
			if d.IsDir() && !pm.Exclusions() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			return os.MkdirAll(filepath.Join(dst, rel), 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		files[rel] = true
		return copyFile(path, filepath.Join(dst, rel))
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
