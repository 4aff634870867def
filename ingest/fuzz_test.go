package ingest_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
)

var fuzzSeeds = []string{
	``,
	`{}`,
	`null`,
	`[]`,
	`{"actor":"a","name":"n","version":"1.0"}`,
	`{"command_id":"c-1","actor":"a","name":"n","version":"1.0","retention":{"policy":"keep_days","keep_days":7}}`,
	`{"actor":"a","name":"n","version":"1.0","retention":null}`,
	`{"actor":"a","package_id":"0193f1c2-aaaa-7bbb-8ccc-dddddddddddd","manifest_digest":"0000000000000000000000000000000000000000000000000000000000000000"}`,
	`{"actor":"a","name":"n","version":"1.0"}{"actor":"b"}`,
	`{"actor":"\u0000","name":"n","version":"1"}`,
	`{"actor":"a","name":"n","version":"1","ACTOR":"b"}`,
	`{"actor":"a","name":"n","version":"1","retention":{"policy":"keep_days","keep_days":1e400}}`,
	"\xff\xfe",
	`{"actor":"a","name":"` + "\u00e9" + `","version":"1"}`,
}

// FuzzDecodeCreate: decoding never panics, and an accepted request
// round-trips through its JSON form.
func FuzzDecodeCreate(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, decode := range []func([]byte) (any, error){
			func(b []byte) (any, error) { return ingest.DecodeCreate(b) },
			func(b []byte) (any, error) { return ingest.DecodeFinalize(b) },
			func(b []byte) (any, error) { return ingest.DecodeGet(b) },
			func(b []byte) (any, error) { return ingest.DecodeList(b) },
		} {
			v, err := decode(data)
			if err != nil {
				var ie *ingest.Error
				require.ErrorAs(t, err, &ie)
				require.Equal(t, ingest.CodeInvalidArgument, ie.Code)
				continue
			}
			again, err := decode(mustJSON(v))
			require.NoError(t, err, "re-decoding %s", mustJSON(v))
			require.Equal(t, v, again)
		}
	})
}

// FuzzCommand sends arbitrary bodies to the running service: every input
// gets a reply, either a success or an error reply of the contract.
func FuzzCommand(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(uint8(0), []byte(s))
		f.Add(uint8(1), []byte(s))
	}
	e := setup(f, ingest.Config{})
	subjects := []string{ingest.SubjectCreate, ingest.SubjectFinalize, ingest.SubjectGet, ingest.SubjectList}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		subject := subjects[int(which)%len(subjects)]
		msg, err := e.client.Request(subject, data, 10*time.Second)
		require.NoError(t, err, "every input gets a reply")
		code := msg.Header.Get(micro.ErrorCodeHeader)
		if code == "" {
			require.True(t, json.Valid(msg.Data), "success reply is JSON: %q", msg.Data)
			return
		}
		var body ingest.ErrorReply
		require.NoError(t, json.Unmarshal(msg.Data, &body), "error body %q", msg.Data)
		require.NotNil(t, body.Error)
		require.Contains(t, map[string]string{
			ingest.CodeInvalidArgument: "400", ingest.CodeNotFound: "404", ingest.CodeConflict: "409",
		}, body.Error.Code, "%s", msg.Data)
		require.NotEmpty(t, body.Error.Message)
	})
}
