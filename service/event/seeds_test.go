package event

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWriteFuzzSeeds regenerates the checked-in seed corpora under
// testdata/fuzz when SERVICE_WRITE_SEEDS=1.
func TestWriteFuzzSeeds(t *testing.T) {
	// Without the switch the generator still runs (it must produce valid
	// seeds), into a temporary directory.
	root := t.TempDir()
	if os.Getenv("SERVICE_WRITE_SEEDS") == "1" {
		root = filepath.Join("testdata", "fuzz")
	}
	write := func(target string, seeds ...string) {
		dir := filepath.Join(root, target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		for _, s := range seeds {
			name := fmt.Sprintf("seed-%x", sha256.Sum256([]byte(s)))[:21]
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte("go test fuzz v1\n"+s), 0o644))
		}
	}
	q := func(b []byte) string { return fmt.Sprintf("[]byte(%q)\n", b) }
	sub, _ := AppendSubscribe(nil, []string{"jobs.*", "a.>", ">"})
	pub, _ := AppendPublish(nil, "chat.hi", []byte("hey"))
	write("FuzzParseEvent", q(seedEvent()))
	write("FuzzParseSubscribe", q(sub))
	write("FuzzParsePublish", q(pub))
	write("FuzzParseAck", q(AppendAck(nil, Ack{Status: StatusOK, Delivered: 2})), q(AppendAck(nil, Ack{Status: StatusBadRequest, Text: "bad pattern"})))
	write("FuzzMatch", fmt.Sprintf("string(%q)\nstring(%q)\n", "a.*.c", "a.b.c"), fmt.Sprintf("string(%q)\nstring(%q)\n", ">", "x.y"))
}
