package store

import (
	"context"
	"errors"
	"strconv"
	"time"
)

// States of a projection version.
const (
	// VersionBuilding: being rebuilt beside the live version.
	VersionBuilding = "building"
	// VersionLive: the version queries and SQL readers see.
	VersionLive = "live"
	// VersionRetired: replaced by a newer version, its tables not yet
	// dropped.
	VersionRetired = "retired"
	// VersionDropped: retired and its tables dropped, or a building
	// version abandoned.
	VersionDropped = "dropped"
)

// ErrVersionObsolete is returned by Rebuilder.SwitchVersion when a
// version's tables are no longer defined as the live ones (a migration
// changed those while it was built): it can never switch, and a rebuild
// abandons it.
var ErrVersionObsolete = errors.New("store: the projection version's tables are not defined as the live ones")

// ProjectionVersion is one version of a projection kept in the log's
// database.
type ProjectionVersion struct {
	Projection string `json:"projection"`
	Version    int    `json:"version"`
	// State is VersionBuilding, VersionLive, VersionRetired or
	// VersionDropped.
	State string `json:"state"`
	// Schema holds a building or retired version's tables; the live
	// version's are in the log's schema ("").
	Schema string `json:"schema,omitempty"`
	// Loaded is true once a building version's bulk load finished, up to
	// the log sequence LoadedTo.
	Loaded    bool       `json:"loaded"`
	LoadedTo  int64      `json:"loaded_to"`
	CreatedAt time.Time  `json:"created_at"`
	LiveAt    *time.Time `json:"live_at,omitempty"`
}

// Checkpoints returns the name a version's checkpoints are kept under: the
// projection's own for the live version (the one projector workers
// advance), "<projection>-v<version>" for the others.
func (v ProjectionVersion) Checkpoints() string {
	if v.State == VersionLive {
		return v.Projection
	}
	return VersionCheckpoints(v.Projection, v.Version)
}

// VersionCheckpoints is the checkpoint name of a version that is not live.
func VersionCheckpoints(projection string, version int) string {
	return projection + "-v" + strconv.Itoa(version)
}

// Versions is implemented by stores that keep a catalog of projection
// versions (both dialects).
type Versions interface {
	// ProjectionVersions returns every version of every projection,
	// ordered by projection and version.
	ProjectionVersions(ctx context.Context) ([]ProjectionVersion, error)
}

// Rebuilder is implemented by stores that can build a new version of a
// projection beside the live one and switch to it atomically (PostgreSQL).
// projector.Rebuild drives it.
type Rebuilder interface {
	Versions
	// BeginVersion creates the projection's next version, empty, beside
	// the live one and records it as building. Only one version of a
	// projection is built at a time.
	BeginVersion(ctx context.Context, projection string) (ProjectionVersion, error)
	// VersionDB returns a store whose view tables are the building version
	// v's and whose log, checkpoints and leases are the log's. Close it
	// after use.
	VersionDB(ctx context.Context, v ProjectionVersion) (DB, error)
	// FinishLoad records that v's bulk load reached loadedTo, once v's
	// tables are indexed and crash-safe.
	FinishLoad(ctx context.Context, v ProjectionVersion, loadedTo int64) error
	// SwitchVersion makes the building version v live in one transaction
	// and returns the version it replaced, now retired.
	SwitchVersion(ctx context.Context, v ProjectionVersion, opts SwitchOptions) (ProjectionVersion, error)
	// DropVersion drops the tables of a building or retired version.
	DropVersion(ctx context.Context, v ProjectionVersion) error
}

// SwitchOptions configures Rebuilder.SwitchVersion.
type SwitchOptions struct {
	// Partitions is the log's partition count.
	Partitions int
	// CatchUp applies to tx, whose view tables are the building version's,
	// the events it lacks and returns the sequence every one of its
	// checkpoints is at afterwards. It runs while the live version's
	// checkpoints are locked: no projector commits meanwhile.
	CatchUp func(ctx context.Context, tx Tx) (int64, error)
	// LockTimeout bounds each wait for a lock (projector batches and
	// queries in flight); 0 waits as long as ctx allows.
	LockTimeout time.Duration
	// TableLockTimeout, when set, bounds instead the wait for the live
	// tables themselves: every query on them queues behind that wait (a
	// reader's long transaction would stall them all), so it is kept short
	// and the switch tried again.
	TableLockTimeout time.Duration
}
