package rendezvous

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestREADMEListsLimitKeys: the README's list of the config file's limit
// keys ("The limit keys are ...") names every key ParseLimits accepts (one
// per exported field of Limits) and no other, so a new field cannot go
// undocumented.
func TestREADMEListsLimitKeys(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	require.NoError(t, err)
	text := string(b)
	start := strings.Index(text, "The limit keys are ")
	require.GreaterOrEqual(t, start, 0, "README: the list of limit keys is gone")
	end := strings.Index(text[start:], "the fields of\n`rendezvous.Limits`")
	require.Greater(t, end, 0, "README: the list of limit keys does not end with \"the fields of `rendezvous.Limits`\"")
	var listed []string
	for _, m := range regexp.MustCompile("`([a-z0-9-]+)`").FindAllStringSubmatch(text[start:start+end], -1) {
		listed = append(listed, m[1])
	}
	require.True(t, slices.IsSorted(listed), "README lists the limit keys out of order: %v", listed)
	require.Equal(t, LimitNames(), listed, "README's limit keys differ from rendezvous.Limits' fields")

	list := strings.Join(strings.Fields(text[start:start+end]), " ")
	lt := reflect.TypeFor[Limits]()
	for i := range lt.NumField() {
		if f := lt.Field(i); f.Type == durationType {
			require.Contains(t, list, "`"+kebab(f.Name)+"` (a duration string", "README: say that %s is a duration string", kebab(f.Name))
		}
	}
	// The example the list gives for a duration.
	l, err := ParseLimits([]byte(`{"agent-ttl": "2160h"}`))
	require.NoError(t, err)
	require.Equal(t, 90*24*time.Hour, l.AgentTTL)
}
