package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

func TestLogEncoding(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		format    string
		tty       bool
		encoding  string
		wantColor bool
	}{
		{"auto", true, "console", true},
		{"auto", false, "json", false},
		{"json", true, "json", false},
		{"json", false, "json", false},
		{"console", true, "console", true},
		{"console", false, "console", false},
	} {
		enc, color := logEncoding(tc.format, tc.tty)
		require.Equal(t, tc.encoding, enc, "%s, tty %v", tc.format, tc.tty)
		require.Equal(t, tc.wantColor, color, "%s, tty %v", tc.format, tc.tty)
	}
}

// TestLogFormatOfAProcess: a service whose stderr is not a terminal logs
// JSON lines by default; --log-format console logs plain console lines
// (no colour escapes into a file).
func TestLogFormatOfAProcess(t *testing.T) {
	t.Parallel()
	natsURL := testenv.NATS(t).URL()
	env := []string{"ARTIFACTSTORE_NATS_URL=" + natsURL,
		"ARTIFACTSTORE_DATABASE_URL=" + filepath.Join(t.TempDir(), "log.db"), "ARTIFACTSTORE_HTTP_LISTEN="}
	for _, format := range []string{"auto", "console"} {
		p := startProc(t, env, "--log-format", format, "ingest")
		testenv.Eventually(t, time.Minute, func() bool {
			return strings.Contains(p.output.String(), "connected to NATS")
		}, "the connect log line; output:\n%s", p.output)
		var line string
		for _, l := range strings.Split(p.output.String(), "\n") {
			if strings.Contains(l, "connected to NATS") {
				line = l
			}
		}
		var m map[string]any
		err := json.Unmarshal([]byte(line), &m)
		if format == "auto" {
			require.NoError(t, err, "not a JSON line: %q", line)
			require.Equal(t, "info", m["level"])
			continue
		}
		require.Error(t, err, "a JSON line with --log-format console: %q", line)
		require.Contains(t, line, "\tINFO\t")
		require.NotContains(t, line, "\x1b[", "colour escapes in a file")
	}
}
