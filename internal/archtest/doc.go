// Package archtest holds tests that guard IronClaw's architecture: which
// packages may import which, and that every package says what it is for.
// It has no code of its own.
package archtest
