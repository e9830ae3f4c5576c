package cuda

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// LibsEnv names the environment variable that overrides the library search: a
// colon-separated list of folders (searched first, in order) or of full paths
// to the libraries.
const LibsEnv = "SWITCHYARD_CUDA_LIBS"

// ErrNoLibrary reports a CUDA library that could not be found or opened.
var ErrNoLibrary = errors.New("cuda: library not found")

// Library names, newest first. The driver is versioned by its soname alone.
var (
	driverNames = []string{"libcuda.so.1", "libcuda.so"}
	cublasNames = []string{"libcublas.so.13", "libcublas.so.12", "libcublas.so"}
	// cublasLtNames are opened before cuBLAS (which links them), so that a cuBLAS
	// found in a folder outside the loader's path still finds its Lt library.
	cublasLtNames = []string{"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"}
)

// searchDirs returns the folders searched for CUDA libraries, in order: the
// SWITCHYARD_CUDA_LIBS folders, LD_LIBRARY_PATH, the CUDA toolkit's and the
// container toolkit's usual folders, the ldconfig cache's folders, and the
// folders of the pip packages nvidia-cublas (any Python). Missing folders are
// skipped; each folder appears once.
func searchDirs(getenv func(string) string, glob func(string) ([]string, error), ldconfig func() []string) []string {
	var dirs []string
	seen := map[string]bool{}
	add := func(d string) {
		if d == "" || seen[d] {
			return
		}
		seen[d] = true
		dirs = append(dirs, d)
	}
	for _, p := range filepath.SplitList(getenv(LibsEnv)) {
		if strings.Contains(filepath.Base(p), ".so") {
			add(filepath.Dir(p))
		} else {
			add(p)
		}
	}
	for _, p := range filepath.SplitList(getenv("LD_LIBRARY_PATH")) {
		add(p)
	}
	for _, p := range []string{
		"/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/cuda/targets/sbsa-linux/lib",
		"/usr/local/nvidia/lib64", "/usr/local/nvidia/lib", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
	} {
		add(p)
	}
	for _, p := range ldconfig() {
		add(p)
	}
	for _, pat := range []string{
		"/usr/local/lib/python3*/*-packages/nvidia/*/lib",
		"/usr/lib/python3*/*-packages/nvidia/*/lib",
		"/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib",
		"/opt/conda/lib/python3*/site-packages/nvidia/*/lib",
		"/root/.local/lib/python3*/site-packages/nvidia/*/lib",
	} {
		m, _ := glob(pat)
		sort.Sort(sort.Reverse(sort.StringSlice(m))) // newer Python and cu13 before cu12
		for _, d := range m {
			add(d)
		}
	}
	return dirs
}

// explicitFiles returns the full library paths named in SWITCHYARD_CUDA_LIBS.
func explicitFiles(getenv func(string) string) []string {
	var files []string
	for _, p := range filepath.SplitList(getenv(LibsEnv)) {
		if strings.Contains(filepath.Base(p), ".so") {
			files = append(files, p)
		}
	}
	return files
}

// candidates lists what to try, in order, to open a library with one of names:
// explicit files with a matching name, then each name in each folder that has
// it, then (when bare is set) the bare names for the dynamic loader's own search.
func candidates(names []string, dirs, files []string, exists func(string) bool, bare bool) []string {
	var out []string
	for _, f := range files {
		for _, n := range names {
			if strings.HasPrefix(filepath.Base(f), strings.TrimSuffix(n, ".so")+".so") {
				out = append(out, f)
				break
			}
		}
	}
	for _, n := range names {
		for _, d := range dirs {
			if p := filepath.Join(d, n); exists(p) {
				out = append(out, p)
			}
		}
	}
	if bare {
		out = append(out, names...)
	}
	return out
}

// ldconfigDirs returns the folders of the CUDA libraries in the ldconfig cache
// (nil where ldconfig is absent, as in distroless images).
func ldconfigDirs() []string {
	path, err := exec.LookPath("ldconfig")
	if err != nil {
		path = "/sbin/ldconfig"
		if _, err := os.Stat(path); err != nil {
			return nil
		}
	}
	out, err := exec.Command(path, "-p").Output()
	if err != nil {
		return nil
	}
	var dirs []string
	for _, line := range strings.Split(string(out), "\n") {
		i := strings.Index(line, "=> ")
		if i < 0 || !(strings.Contains(line, "libcublas") || strings.Contains(line, "libcuda.")) {
			continue
		}
		dirs = append(dirs, filepath.Dir(strings.TrimSpace(line[i+3:])))
	}
	return dirs
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir()
}

// libraryPlan is what the loader tries for each library, with the folders it
// searched (for the error message).
type libraryPlan struct {
	driver, cublasLt, cublas []string
	dirs                     []string
}

func planLibraries() libraryPlan {
	dirs := searchDirs(os.Getenv, filepath.Glob, ldconfigDirs)
	files := explicitFiles(os.Getenv)
	return libraryPlan{
		// The driver belongs to the host (the container toolkit mounts it into the
		// loader's path), so its bare soname comes first.
		driver:   append(append([]string(nil), driverNames[0]), candidates(driverNames, dirs, files, fileExists, false)...),
		cublasLt: candidates(cublasLtNames, dirs, files, fileExists, true),
		cublas:   candidates(cublasNames, dirs, files, fileExists, true),
		dirs:     dirs,
	}
}

// notFound formats the one-line error for a library none of whose candidates opened.
func notFound(what string, tried []string, last error, dirs []string) error {
	return fmt.Errorf("%w: %s (tried %s; searched %s; set %s to its folder): %v",
		ErrNoLibrary, what, strings.Join(tried, ", "), strings.Join(dirs, ":"), LibsEnv, last)
}
