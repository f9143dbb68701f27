package message

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
	h1, _ := AppendHeader(nil, Header{Kind: KindText, Size: 11})
	h2, _ := AppendHeader(nil, Header{Kind: KindFile, Size: 1 << 20, Name: "../../x"})
	write("FuzzParseHeader", q(h1), q(h2))
	write("FuzzParseAck", q(AppendAck(nil, Ack{Status: StatusOK, ID: "18eb6ad85d1b8427de7c3d", Text: "x"})), q(AppendAck(nil, Ack{Status: StatusTooLarge, Text: "over the limit"})))
	write("FuzzSanitizeName", fmt.Sprintf("string(%q)\n", "../../x"), fmt.Sprintf("string(%q)\n", `..\..\windows`), fmt.Sprintf("string(%q)\n", "a\x00b/.."))
}
