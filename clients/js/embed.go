// Package jsclient holds the JavaScript client of the WebSocket gateway,
// tablecast.js, and its types, tablecast.d.ts, as the bytes of the files in
// this folder: the one copy, which the gateway serves at /tablecast.js and
// /tablecast.d.ts and the npm package ships.
package jsclient

import _ "embed"

// Module is tablecast.js, an ES module without dependencies.
//
//go:embed tablecast.js
var Module []byte

// Types is tablecast.d.ts, the module's TypeScript declarations.
//
//go:embed tablecast.d.ts
var Types []byte
