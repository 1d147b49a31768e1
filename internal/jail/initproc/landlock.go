package initproc

import (
	"fmt"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
)

// landlockRules is a prepared Landlock ruleset that limits file access to
// what the sandbox has mounted: execute and read in the system view, read
// and write only in /tmp, /dev/shm, the workspace and rw mounts. It also
// scopes signals and abstract Unix sockets, so the command cannot signal
// init or reach an abstract socket outside its domain. Network access is
// left to the firewall.
type landlockRules struct {
	fd    int // -1 when the kernel has no Landlock
	flags uint32
}

func newLandlock(cfg *Config) (*landlockRules, error) {
	c := landlock.V7.BestEffort()
	c.HandledAccessNet = 0
	rules := []landlock.Rule{
		landlock.PathAccess(llsys.AccessFSReadDir, "/"),
		landlock.RODirs("/etc", "/proc"),
		landlock.RWDirs("/tmp", "/dev/shm"),
		landlock.RWDirs("/dev/pts").WithIoctlDev(),
		landlock.RWFiles("/dev/null", "/dev/zero", "/dev/full", "/dev/tty").WithIoctlDev(),
		landlock.ROFiles("/dev/random", "/dev/urandom"),
	}
	for _, s := range cfg.Sources {
		switch {
		case s.Dir && s.Writable:
			rules = append(rules, landlock.RWDirs(s.Target))
		case s.Dir:
			rules = append(rules, landlock.RODirs(s.Target))
		case s.Writable:
			rules = append(rules, landlock.RWFiles(s.Target))
		default:
			rules = append(rules, landlock.ROFiles(s.Target))
		}
	}
	fd, flags, err := c.NewRulesetFD(rules...)
	if err != nil {
		return nil, fmt.Errorf("build ruleset: %w", err)
	}
	return &landlockRules{fd: fd, flags: flags}, nil
}

// restrictThread enforces the ruleset on the calling thread, which must
// be locked and have no_new_privs set. The ruleset stays open (close on
// exec) for the next exec of a long-lived sandbox.
func (l *landlockRules) restrictThread() error {
	if l.fd < 0 {
		return nil
	}
	if err := llsys.LandlockRestrictSelf(l.fd, l.flags); err != nil {
		return fmt.Errorf("restrict self: %w", err)
	}
	return nil
}
