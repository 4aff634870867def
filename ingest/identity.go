package ingest

import (
	"encoding/json"
)

// IdentityMode says how ingest treats the identity nats-server attaches to
// a request.
//
// # Trust model
//
// A command's actor is what the client claims. When clients reach ingest
// through an account service import with share: true, nats-server adds a
// Nats-Request-Info header with the requester's authenticated account and
// user, replacing any header the client sent (spoofing through imports was
// fixed in nats-server 2.11.15/2.12.6). Ingest can then require that the
// claimed actor is that user. The header is only trustworthy when clients
// cannot publish into ingest's own account directly (they live in other
// accounts and reach it only through the import): inside one account a
// client could send the header itself. Without such a deployment the actor
// is trusted as claimed by any client allowed to publish commands.
type IdentityMode string

// Identity modes.
const (
	// IdentityTrustClaim records the actor as claimed (the default).
	IdentityTrustClaim IdentityMode = ""
	// IdentityVerify rejects a command whose Nats-Request-Info identity
	// differs from its actor; commands without the header are trusted.
	IdentityVerify IdentityMode = "verify"
	// IdentityRequire rejects commands without a Nats-Request-Info
	// identity, and those whose actor differs from it.
	IdentityRequire IdentityMode = "require"
)

// requestInfoHeader is the header nats-server sets on requests crossing a
// service import with share: true.
const requestInfoHeader = "Nats-Request-Info"

// requestInfo is the part of nats-server's ClientInfo ingest reads.
type requestInfo struct {
	Account string `json:"acc"`
	User    string `json:"user"`
	NameTag string `json:"name_tag"`
}

// checkActor applies the identity mode to a command's claimed actor and
// the request's headers. It returns a permission_denied *Error on a
// mismatch.
func checkActor(mode IdentityMode, actor string, header map[string][]string) *Error {
	if mode == IdentityTrustClaim {
		return nil
	}
	vals := header[requestInfoHeader]
	if len(vals) == 0 {
		if mode == IdentityRequire {
			return newError(CodePermissionDenied, "no authenticated identity on the request: send commands through the service import")
		}
		return nil
	}
	var ri requestInfo
	if err := json.Unmarshal([]byte(vals[0]), &ri); err != nil || (ri.User == "" && ri.NameTag == "") {
		return newError(CodePermissionDenied, "the request's identity (Nats-Request-Info) names no user")
	}
	if actor == ri.User || (ri.NameTag != "" && actor == ri.NameTag) {
		return nil
	}
	who := ri.User
	if ri.NameTag != "" {
		who = ri.NameTag
	}
	return newError(CodePermissionDenied, "actor %q is not the authenticated user %q (account %s)", actor, who, ri.Account)
}
