package main

import (
	"os"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/term"
)

// newLogger builds the process's logger on stderr at level, in format
// (auto, console or json; see logEncoding).
func newLogger(level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.Set(level); err != nil {
		return nil, err
	}
	encoding, color := logEncoding(format, term.IsTerminal(int(os.Stderr.Fd())))
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Sampling = nil
	cfg.Encoding = encoding
	if encoding == "console" {
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
		if color {
			cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
		}
	}
	return cfg.Build()
}

// logEncoding chooses zap's encoding for --log-format: auto is console
// for a person at a terminal and JSON for everything that collects logs
// (a file, a pipe, a container runtime). Levels are coloured only on a
// terminal, so that console lines written to a file stay plain.
func logEncoding(format string, tty bool) (encoding string, color bool) {
	switch format {
	case "json":
		return "json", false
	case "console":
		return "console", tty
	}
	if tty {
		return "console", true
	}
	return "json", false
}
