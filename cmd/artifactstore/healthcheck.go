package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"
)

// healthcheckCmd probes a service's /readyz or /healthz for a container
// healthcheck: the image is distroless (no shell, no wget), so the binary
// does it. Hidden: orchestrators call it, operators use the URL.
type healthcheckCmd struct {
	URL     string        `required:"" help:"URL to probe, e.g. http://127.0.0.1:9090/readyz."`
	Timeout time.Duration `default:"3s" help:"Longest the probe waits for the answer."`
}

// Run exits 0 when the URL answers 2xx; otherwise it returns an error
// naming the status and the start of the body (which check failed).
func (c healthcheckCmd) Run(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.URL, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("healthcheck: %s answered %s: %s", c.URL, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
