package event

import (
	"fmt"
	"strings"
)

// ValidateTopic checks the syntax of a topic (see the package doc).
func ValidateTopic(t string) error {
	if err := checkSegments(t, false); err != nil {
		return fmt.Errorf("event: topic %q: %w", t, err)
	}
	return nil
}

// ValidatePattern checks the syntax of a pattern.
func ValidatePattern(p string) error {
	if err := checkSegments(p, true); err != nil {
		return fmt.Errorf("event: pattern %q: %w", p, err)
	}
	return nil
}

func checkSegments(s string, pattern bool) error {
	if len(s) == 0 || len(s) > MaxTopic {
		return fmt.Errorf("want 1-%d bytes", MaxTopic)
	}
	segs := strings.Split(s, ".")
	for i, seg := range segs {
		if seg == "" {
			return fmt.Errorf("empty segment")
		}
		if pattern && (seg == "*" || seg == ">" && i == len(segs)-1) {
			continue
		}
		for j := 0; j < len(seg); j++ {
			c := seg[j]
			if c <= ' ' || c > '~' || c == '*' || c == '>' {
				return fmt.Errorf("character %q not allowed", c)
			}
		}
	}
	return nil
}

// Match reports whether topic matches pattern. Both must be valid.
func Match(pattern, topic string) bool {
	for {
		p, prest, pmore := strings.Cut(pattern, ".")
		if p == ">" {
			return topic != ""
		}
		t, trest, tmore := strings.Cut(topic, ".")
		if topic == "" || p != "*" && p != t {
			return false
		}
		if !pmore || !tmore {
			return !pmore && !tmore
		}
		pattern, topic = prest, trest
	}
}
