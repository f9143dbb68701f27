package trustdb

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestWriteFuzzSeeds regenerates the checked-in fuzz seed corpora under
// testdata/fuzz when TRUSTDB_WRITE_SEEDS=1 (go test -run=TestWriteFuzzSeeds).
// The keys are new each run, so rewrite only the corpus you changed (git
// checkout the others).
func TestWriteFuzzSeeds(t *testing.T) {
	// Without the switch the generator still runs (it must produce valid
	// seeds), into a temporary directory.
	root := t.TempDir()
	if os.Getenv("TRUSTDB_WRITE_SEEDS") == "1" {
		root = filepath.Join("testdata", "fuzz")
	}
	write := func(target string, seeds [][]byte) {
		dir := filepath.Join(root, target)
		require.NoError(t, os.MkdirAll(dir, 0o755))
		old, err := filepath.Glob(filepath.Join(dir, "seed-*"))
		require.NoError(t, err)
		for _, name := range old {
			require.NoError(t, os.Remove(name))
		}
		for _, s := range seeds {
			name := fmt.Sprintf("seed-%x", sha256.Sum256(s))[:21]
			data := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", s)
			require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644))
		}
	}
	write("FuzzParseMessage", validMessageSeeds(t))
	write("FuzzParseRecord", validRecordSeeds(t))
	write("FuzzParseNetwork", networkSeeds(t))
	_, boltSeeds := boltFileSeeds(t)
	write("FuzzCheckBoltMetas", boltSeeds)
}
