package seccomp

import (
	"encoding/binary"
	"fmt"
	"slices"

	"golang.org/x/net/bpf"
)

// InstructionSize is the size of one encoded instruction: the kernel's
// struct sock_filter (code u16, jt u8, jf u8, k u32), little-endian.
const InstructionSize = 8

// AppendInstructions appends ins to b as a packed array of sock_filter
// records (see InstructionSize), the compact form the host ships a filter
// to the jail's init in.
func AppendInstructions(b []byte, ins []bpf.RawInstruction) []byte {
	b = slices.Grow(b, len(ins)*InstructionSize)
	for _, in := range ins {
		b = binary.LittleEndian.AppendUint16(b, in.Op)
		b = append(b, in.Jt, in.Jf)
		b = binary.LittleEndian.AppendUint32(b, in.K)
	}
	return b
}

// DecodeInstructions is the inverse of AppendInstructions. It accepts
// only a whole number of records, 1 to the kernel's BPF_MAXINSNS of them;
// what the instructions mean is checked when the filter is installed.
func DecodeInstructions(b []byte) ([]bpf.RawInstruction, error) {
	if len(b)%InstructionSize != 0 {
		return nil, fmt.Errorf("decode seccomp filter: %d bytes is not a whole number of %d-byte instructions: %w", len(b), InstructionSize, ErrInvalidProfile)
	}
	n := len(b) / InstructionSize
	if n == 0 || n > maxInstructions {
		return nil, fmt.Errorf("decode seccomp filter: %d instructions (want 1..%d): %w", n, maxInstructions, ErrInvalidProfile)
	}
	out := make([]bpf.RawInstruction, n)
	for i := range out {
		r := b[i*InstructionSize : (i+1)*InstructionSize]
		out[i] = bpf.RawInstruction{
			Op: binary.LittleEndian.Uint16(r[0:]),
			Jt: r[2], Jf: r[3],
			K: binary.LittleEndian.Uint32(r[4:]),
		}
	}
	return out, nil
}
