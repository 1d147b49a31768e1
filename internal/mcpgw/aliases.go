package mcpgw

import "github.com/ironclaw/ironclaw/internal/mcpgw/config"

// The configuration types live in package config; these aliases keep the
// gateway's code and API in one vocabulary.
type (
	Config        = config.Config
	ServerConfig  = config.ServerConfig
	SandboxConfig = config.SandboxConfig
	ToolFilter    = config.ToolFilter
	RunParams     = config.RunParams
	DaemonConfig  = config.DaemonConfig
)

// Re-exported names of package config.
const (
	BackendJail         = config.BackendJail
	BackendVM           = config.BackendVM
	BackendNone         = config.BackendNone
	TransportStdio      = config.TransportStdio
	TransportStreamable = config.TransportStreamable
	TransportSSE        = config.TransportSSE
	BuiltinServer       = config.BuiltinServer
	Separator           = config.Separator
)

// ErrConfig marks an invalid configuration.
var ErrConfig = config.ErrConfig

// ParseConfig parses a gateway configuration (see config.Parse).
func ParseConfig(data []byte) (*Config, error) { return config.Parse(data) }

// RunArgv builds the `ironclaw run` argv of a stdio server (see config.RunArgv).
func RunArgv(p RunParams, s *ServerConfig) ([]string, error) { return config.RunArgv(p, s) }

// EnvLines formats a server's env for --env-file (see config.EnvLines).
func EnvLines(env map[string]string) []byte { return config.EnvLines(env) }

func sortedKeys(m map[string]string) []string { return config.SortedKeys(m) }
