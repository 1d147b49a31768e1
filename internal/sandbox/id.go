package sandbox

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"strings"
	"unicode/utf8"
)

// MaxIDLen is the longest sandbox ID accepted, in bytes.
const MaxIDLen = 1024

// KeyLen is the length of a Key in characters: 26 base32 characters carry
// 130 bits of SHA-256, which is collision-resistant for any number of
// sandboxes a host will ever see.
const KeyLen = 26

// keyEncoding is lowercase RFC 4648 base32 without padding: letters and
// digits only, so a key is valid in every kernel name space we use (cgroup
// and file names, interface names, nftables names).
var keyEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// Key is the fixed-length, collision-resistant name of a sandbox that every
// kernel object name and path is derived from. Users choose IDs freely
// ("vm-1", "vm_1", a 500-byte Unicode string); truncating or sanitising them
// would make distinct IDs collide, so nothing is ever named after the ID
// itself, only after its Key.
type Key string

// KeyOf returns the Key of id: base32(SHA-256(id)), truncated to KeyLen.
func KeyOf(id string) Key {
	sum := sha256.Sum256([]byte(id))
	return Key(keyEncoding.EncodeToString(sum[:])[:KeyLen])
}

// Short returns the first n characters of k (n is clamped to KeyLen), for
// names with a hard length limit such as network interfaces (IFNAMSIZ).
// The first n characters of a Key are still 5n bits of SHA-256.
func (k Key) Short(n int) string {
	if n > len(k) {
		n = len(k)
	}
	return string(k[:n])
}

// Valid reports whether k has the shape KeyOf produces. It guards every
// place a key comes from outside (a directory name found during GC, a
// record on disk) before it is used to build a path.
func (k Key) Valid() bool {
	if len(k) != KeyLen {
		return false
	}
	for _, c := range []byte(k) {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

// ValidateID checks a user-supplied sandbox ID. Any UTF-8 string is accepted
// except the empty string, strings with NUL or other control characters
// (they would corrupt logs and terminals) and strings over MaxIDLen bytes.
func ValidateID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: name: must not be empty", ErrInvalid)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%w: name: %d bytes, longer than the limit of %d", ErrInvalid, len(id), MaxIDLen)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: name: not valid UTF-8", ErrInvalid)
	}
	if i := strings.IndexFunc(id, isControl); i >= 0 {
		return fmt.Errorf("%w: name: control character %q at byte %d", ErrInvalid, id[i], i)
	}
	return nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) }

// NewID returns a fresh random sandbox ID such as "ic-q3x7m2kdp4ta".
func NewID() string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // rand.Read never fails on Linux 3.17+
	}
	return "ic-" + keyEncoding.EncodeToString(b[:])[:12]
}

// Hostname returns the hostname a sandbox with this ID gets: the ID itself
// when it is a valid DNS label, otherwise "ic-" and the first 12 characters
// of its key.
func Hostname(id string) string {
	if isDNSLabel(id) {
		return id
	}
	return "ic-" + KeyOf(id).Short(12)
}

func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range []byte(s) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
