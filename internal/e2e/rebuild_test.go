package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/client"
)

// TestRebuildUnderLoad runs `projection rebuild` as its own process while
// commands arrive at 300/s and two projectors keep the live views current:
// throughout, every get and list through ingest (NATS) finds each package
// that was in the views when the rebuild began, never in an earlier state;
// afterwards the oracles hold (the views equal a replay of the log).
func TestRebuildUnderLoad(t *testing.T) {
	skipIfOff(t)
	pg := newPG(t)
	e := startEnv(t, pg, "rebuild", envOptions{ingest: 1, relays: 1, projectors: 2})
	waitAssigned(t, e)
	w := newViewWatch(t, e)
	l := newLoad(t, e, loadOptions{clients: 8, rate: 300, attemptTimeout: 3 * time.Second})
	l.onAck = w.add
	stop := runLoad(t, l)
	sleepCtx(context.Background(), 4*time.Second)
	known := visiblePackages(t, e)
	require.Greater(t, len(known), 300)

	nc, _ := e.connect(t)
	defer nc.Close()
	c, err := client.New(nc)
	require.NoError(t, err)
	var gets, lists atomic.Int64
	readErr := make(chan error, 1)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := readKnown(c, known, done, &gets, &lists); err != nil {
			readErr <- err
		}
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.opts.binary, "projection", "rebuild", "registry")
	cmd.Env = append(os.Environ(), e.env...)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "projection rebuild:\n%s", out)
	require.Contains(t, string(out), "registry version 2 is live")
	sleepCtx(context.Background(), 2*time.Second) // reads and load after the switch
	close(done)
	wg.Wait()
	stop()
	select {
	case err := <-readErr:
		t.Fatalf("a read during the rebuild: %v", err)
	default:
	}
	t.Logf("%d gets and %d full lists of %d packages during the rebuild", gets.Load(), lists.Load(), len(known))
	require.Greater(t, gets.Load(), int64(50))
	require.Greater(t, lists.Load(), int64(2))
	w.await(t, 30*time.Second)
	requireVerdicts(t, e, l.snapshot(), 90*time.Second)
}

// visiblePackages returns the status of every package in the views now.
func visiblePackages(t *testing.T, e *env) map[string]string {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), e.dbURL)
	require.NoError(t, err)
	defer conn.Close(context.Background())
	rows, err := conn.Query(context.Background(), "SELECT package_id, status FROM artifact_packages")
	require.NoError(t, err)
	out := map[string]string{}
	for rows.Next() {
		var id, status string
		require.NoError(t, rows.Scan(&id, &status))
		out[id] = status
	}
	require.NoError(t, rows.Err())
	return out
}

// readKnown gets each known package in turn, and lists them all every 50
// gets, until done: each must be found, finalized if it was.
func readKnown(c *client.Client, known map[string]string, done chan struct{}, gets, lists *atomic.Int64) error {
	ctx := context.Background()
	for {
		for id, status := range known {
			select {
			case <-done:
				return nil
			default:
			}
			p, err := c.GetPackage(ctx, id)
			if err != nil {
				return fmt.Errorf("get %s: %w", id, err)
			}
			if status == "finalized" && p.Status != "finalized" {
				return errors.New("get " + id + ": finalized before the rebuild, " + p.Status + " now")
			}
			if gets.Add(1)%50 == 0 {
				if err := listKnown(ctx, c, known); err != nil {
					return err
				}
				lists.Add(1)
			}
		}
	}
}

func listKnown(ctx context.Context, c *client.Client, known map[string]string) error {
	seen := 0
	for p, err := range c.Packages(ctx, client.ListRequest{}) {
		if err != nil {
			return fmt.Errorf("list: %w", err)
		}
		if _, ok := known[p.ID]; ok {
			seen++
		}
	}
	if seen != len(known) {
		return fmt.Errorf("list: %d of the %d packages in the views before the rebuild", seen, len(known))
	}
	return nil
}
