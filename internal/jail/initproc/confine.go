package initproc

import (
	"fmt"
	"os"
	"strings"
)

// CheckConfined checks a thread's /proc status for what every command of
// a sandbox inherits.
func CheckConfined(st map[string]string) error {
	if st["NoNewPrivs"] != "1" {
		return fmt.Errorf("launching thread has NoNewPrivs %q, want 1", st["NoNewPrivs"])
	}
	if st["CapBnd"] != "0000000000000000" {
		return fmt.Errorf("launching thread has CapBnd %s, want none", st["CapBnd"])
	}
	if st["Seccomp"] != "2" {
		return fmt.Errorf("launching thread has Seccomp %q, want 2 (filter)", st["Seccomp"])
	}
	return nil
}

// ReadStatus parses a /proc status file into its fields.
func ReadStatus(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}
