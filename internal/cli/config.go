package cli

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// parseRole parses a role's flags from three sources, each overriding the one
// before: a YAML config file (--config, or $SWITCHYARD_CONFIG), SWITCHYARD_*
// environment variables (the flag name upper-cased with dashes as
// underscores: --max-running is SWITCHYARD_MAX_RUNNING), and the command line.
//
// The file's keys are flag names; nested maps join their keys with a dash
// (gossip: {bind: ":7946"} is --gossip-bind), lists become comma-separated
// values (etcd: [a:2379, b:2379]). An unknown key is an error that lists the
// valid ones, so a typo never passes silently.
func parseRole(fs *flag.FlagSet, args []string) error {
	path := fs.String("config", os.Getenv("SWITCHYARD_CONFIG"), "YAML file of settings (keys are flag names; environment SWITCHYARD_* and flags override it)")
	if p, ok := findFlag(args, "config"); ok {
		*path = p
	}
	if *path != "" {
		if err := applyConfigFile(fs, *path); err != nil {
			fmt.Fprintf(fs.Output(), "%v\n", err)
			return errUsage
		}
	}
	if err := applyEnv(fs, os.Environ()); err != nil {
		fmt.Fprintf(fs.Output(), "%v\n", err)
		return errUsage
	}
	return parse(fs, args)
}

// findFlag returns the value of --name / -name in args (before any "--").
func findFlag(args []string, name string) (string, bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			break
		}
		for _, p := range []string{"--" + name, "-" + name} {
			if a == p && i+1 < len(args) {
				return args[i+1], true
			}
			if v, ok := strings.CutPrefix(a, p+"="); ok {
				return v, true
			}
		}
	}
	return "", false
}

func applyConfigFile(fs *flag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	settings := map[string]string{}
	if err := flatten("", doc, settings); err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var errs []error
	for _, k := range keys {
		if k == "config" {
			errs = append(errs, fmt.Errorf("config %s: a config file cannot name another (key %q)", path, k))
			continue
		}
		if fs.Lookup(k) == nil {
			errs = append(errs, fmt.Errorf("config %s: unknown setting %q; valid settings: %s", path, k, flagNames(fs)))
			continue
		}
		if err := fs.Set(k, settings[k]); err != nil {
			errs = append(errs, fmt.Errorf("config %s: %s: %w", path, k, err))
		}
	}
	return errors.Join(errs...)
}

// flatten turns nested maps into dash-joined keys and values into flag text.
func flatten(prefix string, v any, out map[string]string) error {
	switch t := v.(type) {
	case map[string]any:
		for k, sub := range t {
			key := k
			if prefix != "" {
				key = prefix + "-" + k
			}
			if err := flatten(key, sub, out); err != nil {
				return err
			}
		}
	case []any:
		parts := make([]string, 0, len(t))
		for _, e := range t {
			switch e.(type) {
			case map[string]any, []any:
				return fmt.Errorf("%s: lists of lists or maps are not settings", prefix)
			}
			parts = append(parts, scalar(e))
		}
		out[prefix] = strings.Join(parts, ",")
	case nil:
		return fmt.Errorf("%s: empty value", prefix)
	default:
		out[prefix] = scalar(t)
	}
	return nil
}

func scalar(v any) string {
	if f, ok := v.(float64); ok && f == float64(int64(f)) {
		return fmt.Sprint(int64(f)) // YAML numbers arrive as float64 through JSON
	}
	return fmt.Sprint(v)
}

// applyEnv sets every flag whose SWITCHYARD_* variable is present.
func applyEnv(fs *flag.FlagSet, environ []string) error {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" {
			return
		}
		name := EnvName(f.Name)
		if v, ok := env[name]; ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("environment %s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// EnvName is the environment variable of a role flag.
func EnvName(flagName string) string {
	return "SWITCHYARD_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

func flagNames(fs *flag.FlagSet) string {
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name != "config" {
			names = append(names, f.Name)
		}
	})
	return strings.Join(names, ", ")
}
