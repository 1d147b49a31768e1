// Package store is IronClaw's embedded, durable record store: one SQLite
// file (modernc.org/sqlite, no cgo) opened in WAL mode so that a writer (the
// MCP gateway, later the daemon) and readers (`ironclaw audit`) in other
// processes can use it at the same time.
//
// The schema is versioned: migrations are applied in order inside one
// transaction each and the schema version is kept in PRAGMA user_version, so
// a newer binary upgrades an older file and an older binary refuses a file
// from a newer one. New tables are added by appending a migration; applied
// migrations are never edited.
package store
