package addressing

import (
	"strconv"
	"strings"
	"testing"
)

// badlyFormatted reports fmt's error marks ("%!w(<nil>)") in err, outside
// the quoted input.
func badlyFormatted(err error, in string) bool {
	return strings.Contains(strings.ReplaceAll(err.Error(), strconv.Quote(in), ""), "%!")
}

// FuzzParseAddr checks that parsing never panics and that every accepted
// string is the one canonical text form of its value.
func FuzzParseAddr(f *testing.F) {
	for _, s := range []string{"0:3f2a.91c0.0b17", "65535:ffff.ffff.ffff", "1:0000.0000.0001", "01:3f2a.91c0.0b17", "0:3F2A.91c0.0b17", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAddr(s)
		if err != nil {
			if badlyFormatted(err, s) {
				t.Fatalf("ParseAddr(%q): badly formatted error %q", s, err)
			}
			if a.IsValid() {
				t.Fatalf("ParseAddr(%q) failed but returned valid %v", s, a)
			}
			return
		}
		if got := a.String(); got != s {
			t.Fatalf("ParseAddr(%q).String() = %q", s, got)
		}
		b, _ := a.AppendBinary(nil)
		back, ok := AddrFromBinary(b)
		if !ok || back != a {
			t.Fatalf("binary round trip of %v gave %v", a, back)
		}
	})
}

// FuzzParseSockAddr is FuzzParseAddr for socket addresses.
func FuzzParseSockAddr(f *testing.F) {
	for _, s := range []string{"0:3f2a.91c0.0b17:80", "0:3f2a.91c0.0b17:0", "0:3f2a.91c0.0b17:65535", "0:3f2a.91c0.0b17:080", "0:3f2a.91c0.0b17"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseSockAddr(s)
		if err != nil {
			if badlyFormatted(err, s) {
				t.Fatalf("ParseSockAddr(%q): badly formatted error %q", s, err)
			}
			return
		}
		if got := a.String(); got != s {
			t.Fatalf("ParseSockAddr(%q).String() = %q", s, got)
		}
	})
}

// FuzzParseTarget checks hostname and address targets: accepted hostnames
// are valid and round-trip, and nothing panics.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"alice", "agent-7", "-a", "0:3f2a.91c0.0b17", "A", "a..b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTarget(s)
		if err != nil {
			return
		}
		if tg.String() != s {
			t.Fatalf("ParseTarget(%q).String() = %q", s, tg.String())
		}
		if h, ok := tg.Hostname(); ok {
			if ValidateHostname(h) != nil {
				t.Fatalf("accepted invalid hostname %q", h)
			}
		}
	})
}

// FuzzParsePublicKey checks key text parsing round-trips.
func FuzzParsePublicKey(f *testing.F) {
	f.Add("47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU")
	f.Add("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return
		}
		back, err := ParsePublicKey(k.String())
		if err != nil || back != k {
			t.Fatalf("round trip of %q failed: %v", s, err)
		}
	})
}
