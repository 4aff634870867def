package ingest_test

import (
	"errors"
	"fmt"

	"github.com/artifactstore/artifactstore/ingest"
)

// Requests are decoded strictly and validated before anything is decided;
// a bad one is answered with an *ingest.Error of code invalid_argument.
func ExampleDecodeCreate() {
	req, err := ingest.DecodeCreate([]byte(`{"command_id":"c-1","actor":"ci","name":"web-app","version":"1.4.0"}`))
	fmt.Println(req.Name, req.Version, err)

	_, err = ingest.DecodeCreate([]byte(`{"actor":"ci","name":"web.app","version":"1.4.0"}`))
	var e *ingest.Error
	fmt.Println(errors.As(err, &e), e.Code, e.HTTPStatus(), errors.Is(err, ingest.ErrInvalidArgument))
	fmt.Println(e.Message)

	_, err = ingest.DecodeCreate([]byte(`{"actor":"ci","name":"web-app","version":"1.4.0","colour":"blue"}`))
	fmt.Println(err)
	// Output:
	// web-app 1.4.0 <nil>
	// true invalid_argument 400 true
	// name may contain only A-Z a-z 0-9 - _, found '.' at 3
	// ingest: invalid_argument: decoding request: unknown field "colour"
}
