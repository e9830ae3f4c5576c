// Command switchyard is the single Switchyard binary; each role or tool is a
// subcommand (see `switchyard help`).
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/switchyard-serving/switchyard/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
