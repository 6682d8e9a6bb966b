package admin

import _ "embed"

// openAPIDocument describes the whole API (OpenAPI 3.0), served at
// /v1/openapi.json; the admin tests check every request and answer
// against it.
//
//go:embed openapi.json
var openAPIDocument []byte

// OpenAPI returns the OpenAPI document of the API.
func OpenAPI() []byte { return append([]byte(nil), openAPIDocument...) }
