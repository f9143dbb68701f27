package message

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseHeader: parsing never panics, and what parses re-encodes to a
// frame that parses to the same header.
func FuzzParseHeader(f *testing.F) {
	for _, h := range []Header{{Kind: KindText, Size: 11}, {Kind: KindFile, Size: 1 << 20, Name: "../../x"}} {
		b, _ := AppendHeader(nil, h)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		enc, err := AppendHeader(nil, h)
		if err != nil {
			t.Fatalf("parsed %+v does not encode: %v", h, err)
		}
		h2, err := ParseHeader(enc)
		if err != nil || h2 != h {
			t.Fatalf("round trip: %+v -> %+v, %v", h, h2, err)
		}
	})
}

// FuzzParseAck: parsing never panics and round-trips.
func FuzzParseAck(f *testing.F) {
	f.Add(AppendAck(nil, Ack{Status: StatusOK, ID: "18eb6ad85d1b8427de7c3d", Text: "x"}))
	f.Add(AppendAck(nil, Ack{Status: StatusTooLarge, Text: "over the limit"}))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAck(b)
		if err != nil {
			return
		}
		a2, err := ParseAck(AppendAck(nil, a))
		if err != nil || a2 != a {
			t.Fatalf("round trip: %+v -> %+v, %v", a, a2, err)
		}
	})
}

// FuzzSanitizeName: whatever a sender calls a file, the name stays one path
// element inside the inbox.
func FuzzSanitizeName(f *testing.F) {
	for _, s := range []string{"../../x", "a/b\\c", "..", "report.pdf", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		s := SanitizeName(name)
		if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\\\x00") || len(s) > maxNameBytes {
			t.Fatalf("SanitizeName(%q) = %q", name, s)
		}
		root := "/inbox/files"
		if p := filepath.Join(root, s); filepath.Dir(p) != root {
			t.Fatalf("SanitizeName(%q) = %q escapes: %s", name, s, p)
		}
	})
}
