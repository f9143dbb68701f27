package main

import (
	"flag"
	"fmt"
	"io"
)

// This file's init runs after main.go's (init functions run in file name
// order), so this registration of "version", which adds --json, replaces
// the plain one registered there.
func init() {
	registerCLI(&cliCommand{
		noun: "version", summary: "print the version", output: versionInfo{}, daemonless: true,
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) { return currentVersion(), nil }
		},
		human: func(w io.Writer, v any) { fmt.Fprintln(w, "agentnet", v.(versionInfo).Version) },
	})
}
