package projection

// Test hooks for the external tests.

// SetBeforeCommit makes an instance call f before each batch commits; an
// error stops the instance there as if killed (nothing committed, leases
// left to expire).
func SetBeforeCommit(c *Config, f func(partition int) error) { c.hooks.beforeCommit = f }

// SetAfterCommit makes an instance call f after each batch committed; an
// error stops the instance there as if killed.
func SetAfterCommit(c *Config, f func(partition int, last int64) error) { c.hooks.afterCommit = f }

// ErrCrashed is what Run returns after a hook killed the instance.
var ErrCrashed = errCrashed
