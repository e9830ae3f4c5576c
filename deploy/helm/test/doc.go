// Package helmtest validates the Switchyard Helm chart in deploy/helm/switchyard.
//
// It is its own Go module so that k8s.io/api and its dependency tree never
// enter the main go.mod. The tests render the chart with a real helm binary
// over the default values and several variants (values/*.yaml), then:
//
//   - decode every rendered manifest strictly into the Kubernetes API types
//     (unknown or duplicate fields and wrong types are errors);
//   - assert what matters for a working cluster: Services and PodDisruptionBudgets
//     select pods, named ports and probes resolve, every container has probes
//     and a locked-down security context, expert pods request GPUs exactly
//     when gpu.enabled, etcd members and endpoints agree, and so on;
//   - check every Switchyard container's args against the real binary's flag
//     sets: the args plus a trailing -h are passed to `switchyard`, whose
//     flag.FlagSet prints only "Usage of switchyard <role>:" when every flag
//     before -h parsed, and an error line first ("flag provided but not
//     defined", "invalid value ...", "unexpected argument ...") otherwise. -h
//     stops the binary before it does anything, so nothing is started;
//   - check model distribution: `switchyard download` (the Switchyard image,
//     no Python or pip anywhere in the output) in the download Job and every
//     pod's init container, with the variant's repo, revision, folder and
//     include list, into the cache model.cache selects, which the serving
//     containers mount read-only;
//   - run the repository README's Kubernetes `helm install` commands with
//     exactly their flags, check the images against the Makefile's `make
//     image` names, and check the install notes (NOTES.txt, rendered through
//     a temporary copy of the chart) against the rendered auth settings;
//   - check the KEDA ScaledObject and the PrometheusRule (structurally, and
//     with `promtool check rules` when promtool is installed), and that every
//     switchyard_* series the dashboard, alerts and triggers query is defined
//     in the Go sources;
//   - check that bad values (wrong types, unknown keys, out-of-range numbers)
//     fail `helm lint --strict` and `helm template` through values.schema.json.
//
// Environment: HELM is the helm binary (default: helm from PATH; the tests are
// skipped when there is none); SWITCHYARD_BIN is a built switchyard binary
// (default: built from the repository root into a temporary folder);
// SWITCHYARD_CHART overrides the chart folder (default: ../switchyard).
// scripts/helm-test.sh at the repository root sets both.
package helmtest
