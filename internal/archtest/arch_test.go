// Package archtest checks that the dependency arrows of DESIGN.md §2 hold.
package archtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/agentnet/agentnet"

// allowed lists, per package directory (prefix match on sub-packages), the
// module-internal packages it may import. Packages not listed are free.
var allowed = map[string][]string{
	"addressing":       {},
	"internal/vport":   {},
	"internal/wire":    {},
	"internal/certs":   {"addressing"},
	"trustdb":          {"addressing", "internal/wire"},
	"network":          {"addressing", "internal/wire"},
	"rendezvous/proto": {"addressing"},
	"rendezvous":       {"addressing", "trustdb", "network", "rendezvous", "internal/"},
	"quicnode":         {"addressing", "trustdb", "network", "rendezvous", "internal/", "quicnode/internal/"},
	// The path manager knows peers by key and the rendezvous as a client;
	// trust, ports and streams stay in quicnode.
	"quicnode/internal/paths": {"addressing", "rendezvous", "internal/"},
	"ctl":                     {},
	"service":                 {"addressing", "service", "internal/atomicfile"},
	"daemon":                  {"addressing", "trustdb", "network", "rendezvous", "quicnode", "ctl", "service", "internal/"},
	// The MCP server is a client of the daemon's API: it never opens the
	// trust store or the node (so it never holds keys).
	"mcpserver": {"addressing", "ctl", "network", "service/event"},
}

func TestImportDirections(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, filepath.Dir(path))
		rule, ok := ruleFor(filepath.ToSlash(rel))
		if !ok {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if !strings.HasPrefix(p, module+"/") {
				continue
			}
			own := strings.TrimPrefix(p, module+"/")
			if !permitted(own, rule) {
				t.Errorf("%s imports %s, which DESIGN.md §2 forbids", filepath.ToSlash(rel), own)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no files checked")
	}
}

// ruleFor returns the most specific rule for a package directory.
func ruleFor(dir string) ([]string, bool) {
	best, bestLen, found := []string(nil), -1, false
	for k, v := range allowed {
		if (dir == k || strings.HasPrefix(dir, k+"/")) && len(k) > bestLen {
			best, bestLen, found = v, len(k), true
		}
	}
	return best, found
}

func permitted(pkg string, rule []string) bool {
	for _, r := range rule {
		if strings.HasSuffix(r, "/") && strings.HasPrefix(pkg, r) || pkg == r || strings.HasPrefix(pkg, r+"/") {
			return true
		}
	}
	return false
}
