package daemon

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImportDirections keeps the layering of the daemon's packages: ctl (the
// API's types and client) imports nothing of ours, the services import only
// addressing (never quicnode: a service works on any net.Listener), and
// nothing below cmd imports the daemon.
func TestImportDirections(t *testing.T) {
	const module = "github.com/agentnet/agentnet/"
	rules := map[string][]string{
		"ctl":     {},
		"service": {"addressing", "service"},
	}
	for dir, allowed := range rules {
		err := filepath.WalkDir(filepath.Join("..", dir), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
				return err
			}
			f, err := parser.ParseFile(token.NewFileSet(), p, nil, parser.ImportsOnly)
			if err != nil {
				return err
			}
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				own, ok := strings.CutPrefix(path, module)
				if !ok {
					continue
				}
				okay := false
				for _, a := range allowed {
					okay = okay || own == a || strings.HasPrefix(own, a+"/")
				}
				if !okay {
					t.Errorf("%s imports %s", p, own)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
}
