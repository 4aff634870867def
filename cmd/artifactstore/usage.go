package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/alecthomas/kong"
)

// exitUsage is the exit code of a command line that does not parse (a
// missing required flag, a value outside an enum, an unknown flag or
// command). kong's own default is 80; the README promises 2.
const exitUsage = 2

// usageError reports err, when it is a kong parse error, on w as one line
// plus a one-line hint naming the subcommand's --help, and returns
// exitUsage; ok is false for any other error.
func usageError(w io.Writer, err error) (code int, ok bool) {
	var pe *kong.ParseError
	if !errors.As(err, &pe) {
		return 0, false
	}
	fmt.Fprintf(w, "artifactstore: %v\n", pe.Unwrap())
	fmt.Fprintf(w, "run '%s --help' for usage\n", strings.Join(commandPath(pe.Context), " "))
	return exitUsage, true
}

// commandPath is the binary's name and the subcommands the command line
// selected (positional arguments left out).
func commandPath(ctx *kong.Context) []string {
	path := []string{"artifactstore"}
	if ctx == nil {
		return path
	}
	for _, w := range strings.Fields(ctx.Command()) {
		if !strings.HasPrefix(w, "<") {
			path = append(path, w)
		}
	}
	return path
}
