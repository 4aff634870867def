package ingest_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/store"
)

func TestValidateNameVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, version string
		ok            bool
	}{
		{"a", "1", true},
		{"web-app", "1.2.3", true},
		{"Web_App-2", "2.0.0-rc.1+build5", true},
		{strings.Repeat("n", 128), strings.Repeat("1", 128), true},
		{strings.Repeat("n", 129), "1", false},
		{"n", strings.Repeat("1", 129), false},
		{"-n", "1", false},
		{"n.m", "1", false},
		{"n>", "1", false},
		{"n m", "1", false},
		{"né", "1", false},
		{"n", ".1", false},
		{"n", "1.", false},
		{"n", "1..2", false},
		{"n", "1.*", false},
		{"n", "1 2", false},
		{"n", "v1/2", false},
	} {
		err := ingest.ValidateName(tc.name)
		if err == nil {
			err = ingest.ValidateVersion(tc.version)
		}
		assert.Equal(t, tc.ok, err == nil, "%q %q: %v", tc.name, tc.version, err)
		if tc.ok {
			assert.True(t, store.ValidToken(tc.name), "a name is one subject token")
			for _, tok := range strings.Split(tc.version, ".") {
				assert.True(t, store.ValidToken(tok), "version token %q", tok)
			}
		}
	}
}
