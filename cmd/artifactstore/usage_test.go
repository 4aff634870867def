package main

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestUsageErrorsExit2: a command line kong cannot parse exits 2 (as the
// README promises; kong's own default is 80) with the error and a one-line
// hint naming the subcommand's --help, and no help page.
func TestUsageErrorsExit2(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args       []string
		want, hint string
	}{
		{[]string{"package", "create", "--name", "web", "--version", "1"}, "missing flags: --actor", "artifactstore package create --help"},
		{[]string{"package", "list", "--status", "bogus"}, "--status must be one of", "artifactstore package list --help"},
		{[]string{"status", "--no-such-flag"}, "unknown flag --no-such-flag", "artifactstore status --help"},
		{[]string{"no-such-command"}, "unexpected argument no-such-command", "artifactstore --help"},
	} {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, tc.args...)
			require.Equal(t, 2, r.code, "stderr:\n%s", r.stderr)
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			require.Len(t, lines, 2, "the error and a one-line hint:\n%s", r.stderr)
			require.Contains(t, lines[0], tc.want)
			require.True(t, strings.HasPrefix(lines[0], "artifactstore: "), lines[0])
			require.Contains(t, lines[1], tc.hint)
			require.Empty(t, r.stdout)
		})
	}
}
