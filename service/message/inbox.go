package message

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/agentnet/agentnet/internal/atomicfile"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"
)

// Item is one message or file in the inbox.
type Item struct {
	ID       string    `json:"id"`
	Kind     Kind      `json:"-"`
	KindName string    `json:"kind"`
	From     string    `json:"from"` // the sender's address
	Hostname string    `json:"hostname"`
	Name     string    `json:"name"` // files: the sanitised name stored under
	Path     string    `json:"path"` // the content, inside the inbox directory
	Bytes    int64     `json:"bytes"`
	SHA256   string    `json:"sha256"` // hex
	Received time.Time `json:"received"`
}

// ErrNotFound is returned for an unknown item ID.
var ErrNotFound = errors.New("message: no such inbox item")

// ErrInboxFull is returned when an item would exceed the inbox quota.
var ErrInboxFull = errors.New("message: inbox full")

// maxNameBytes bounds a stored file name (most file systems allow 255).
const maxNameBytes = 200

// Inbox is a directory of received items with a size quota. It is safe for
// concurrent use.
type Inbox struct {
	dir      string
	maxBytes int64

	mu       sync.Mutex
	items    map[string]Item
	used     int64 // committed bytes
	reserved int64 // bytes of transfers in progress
}

// OpenInbox opens (creating it if needed) the inbox in dir, with a quota of
// maxBytes (0: unlimited). It removes leftovers of interrupted transfers.
// A damaged index entry is never skipped silently: OpenInbox fails with an
// error wrapping ErrDamaged that names the entries, and changes nothing.
func OpenInbox(dir string, maxBytes int64) (*Inbox, error) {
	for _, d := range []string{dir, filepath.Join(dir, "files"), filepath.Join(dir, "messages"), filepath.Join(dir, "index")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("message: inbox: %w", err)
		}
	}
	os.RemoveAll(filepath.Join(dir, ".tmp"))
	if err := os.MkdirAll(filepath.Join(dir, ".tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("message: inbox: %w", err)
	}
	in := &Inbox{dir: dir, maxBytes: maxBytes, items: make(map[string]Item)}
	ents, err := os.ReadDir(filepath.Join(dir, "index"))
	if err != nil {
		return nil, fmt.Errorf("message: inbox: %w", err)
	}
	var bad []string
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !ValidID(id) {
			continue // not an entry (a temporary file of an interrupted write)
		}
		it, err := in.loadEntry(filepath.Join(dir, "index", e.Name()), id)
		if err != nil {
			bad = append(bad, e.Name()+": "+err.Error())
			continue
		}
		in.items[id] = it
		in.used += it.Bytes
	}
	if len(bad) > 0 {
		more := ""
		if len(bad) > 3 {
			more, bad = fmt.Sprintf("; and %d more", len(bad)-3), bad[:3]
		}
		return nil, fmt.Errorf("%w: %s: %s%s", ErrDamaged, filepath.Join(dir, "index"), strings.Join(bad, "; "), more)
	}
	return in, nil
}

// ErrDamaged is wrapped by OpenInbox's error when index entries are
// damaged: unreadable, malformed, or naming content that is missing or of
// another size. Nothing was changed.
var ErrDamaged = errors.New("message: inbox index damaged")

// loadEntry reads and checks one index entry.
func (in *Inbox) loadEntry(p, id string) (Item, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return Item{}, err
	}
	var it Item
	if err := json.Unmarshal(b, &it); err != nil {
		return Item{}, fmt.Errorf("malformed: %v", err)
	}
	if it.ID != id {
		return Item{}, fmt.Errorf("names item %q", it.ID)
	}
	if it.Kind, err = ParseKind(it.KindName); err != nil {
		return Item{}, err
	}
	if !in.inside(it.Path) {
		return Item{}, fmt.Errorf("content path %q is outside the inbox", it.Path)
	}
	fi, err := os.Stat(it.Path)
	if err != nil {
		return Item{}, fmt.Errorf("content: %v", err)
	}
	if fi.Size() != it.Bytes || it.Bytes < 0 {
		return Item{}, fmt.Errorf("content is %d bytes, the entry says %d", fi.Size(), it.Bytes)
	}
	return it, nil
}

// Dir returns the inbox directory.
func (in *Inbox) Dir() string { return in.dir }

// Bytes returns the total size of the items.
func (in *Inbox) Bytes() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.used
}

// List returns every item, oldest first.
func (in *Inbox) List() []Item {
	in.mu.Lock()
	out := make([]Item, 0, len(in.items))
	for _, it := range in.items {
		out = append(out, it)
	}
	in.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Get returns the item with id.
func (in *Inbox) Get(id string) (Item, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	it, ok := in.items[id]
	if !ok {
		return Item{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	return it, nil
}

// Delete removes the item with id and its content.
func (in *Inbox) Delete(id string) (Item, error) {
	in.mu.Lock()
	it, ok := in.items[id]
	if ok {
		delete(in.items, id)
		in.used -= it.Bytes
	}
	in.mu.Unlock()
	if !ok {
		return Item{}, fmt.Errorf("%w: %q", ErrNotFound, id)
	}
	os.Remove(filepath.Join(in.dir, "index", id+".json"))
	if in.inside(it.Path) {
		os.Remove(it.Path)
	}
	return it, nil
}

// inside reports whether p is a path inside the inbox directory.
func (in *Inbox) inside(p string) bool {
	rel, err := filepath.Rel(in.dir, p)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel)
}

// reserve books n bytes of quota for a transfer.
func (in *Inbox) reserve(n int64) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.maxBytes > 0 && in.used+in.reserved+n > in.maxBytes {
		return fmt.Errorf("%w: %d of %d bytes used", ErrInboxFull, in.used+in.reserved, in.maxBytes)
	}
	in.reserved += n
	return nil
}

func (in *Inbox) unreserve(n int64) {
	in.mu.Lock()
	in.reserved -= n
	in.mu.Unlock()
}

// tempFile creates a file for a transfer in progress.
func (in *Inbox) tempFile() (*os.File, error) {
	return os.CreateTemp(filepath.Join(in.dir, ".tmp"), "recv-")
}

// commit moves a completed transfer into place and records it. it.Kind,
// From, Hostname, Bytes, SHA256 and (for files) Name are set by the caller;
// commit sets ID, Path, Received and the final Name.
func (in *Inbox) commit(tmp string, it Item) (Item, error) {
	it.ID = newID()
	it.KindName = it.Kind.String()
	it.Received = time.Now().UTC()
	var err error
	if it.Kind == KindFile {
		it.Path, it.Name, err = in.place(tmp, SanitizeName(it.Name))
	} else {
		it.Name = ""
		it.Path = filepath.Join(in.dir, "messages", it.ID+extension(it.Kind))
		err = os.Rename(tmp, it.Path)
	}
	if err != nil {
		os.Remove(tmp)
		return Item{}, fmt.Errorf("message: inbox: store: %w", err)
	}
	b, _ := json.MarshalIndent(it, "", "  ")
	idx := filepath.Join(in.dir, "index", it.ID+".json")
	if err := writeFileAtomic(idx, b); err != nil {
		os.Remove(it.Path)
		return Item{}, fmt.Errorf("message: inbox: index: %w", err)
	}
	in.mu.Lock()
	in.items[it.ID] = it
	in.used += it.Bytes
	in.mu.Unlock()
	return it, nil
}

// place links tmp into files/ under name, or "name (N).ext" if taken, and
// removes tmp. Linking fails rather than replacing an existing file, so two
// transfers never overwrite each other.
func (in *Inbox) place(tmp, name string) (string, string, error) {
	ext := path.Ext(name)
	stem := strings.TrimSuffix(name, ext)
	if stem == "" { // ".bashrc": the whole name is the stem
		stem, ext = name, ""
	}
	for i := 0; i < 10000; i++ {
		n := name
		if i > 0 {
			n = fmt.Sprintf("%s (%d)%s", stem, i, ext)
		}
		p := filepath.Join(in.dir, "files", n)
		err := os.Link(tmp, p)
		if err == nil {
			os.Remove(tmp)
			return p, n, nil
		}
		if !errors.Is(err, os.ErrExist) {
			return "", "", err
		}
	}
	return "", "", errors.New("too many files with that name")
}

func extension(k Kind) string {
	switch k {
	case KindText:
		return ".txt"
	case KindJSON:
		return ".json"
	}
	return ".bin"
}

func writeFileAtomic(p string, b []byte) error { return atomicfile.WriteFile(p, b, 0o600) }

// newID returns a new item ID: 16 hex digits of Unix nanoseconds and 6 random
// hex digits, so IDs sort by arrival.
func newID() string {
	var r [3]byte
	rand.Read(r[:])
	return fmt.Sprintf("%016x%s", time.Now().UnixNano(), hex.EncodeToString(r[:]))
}

// ValidID reports whether id has the form of an item ID (22 lower-case hex
// digits), so it is safe to use in a path.
func ValidID(id string) bool {
	if len(id) != 22 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// SanitizeName turns a sender's file name into one safe to create inside the
// inbox: only the last path element counts (either slash separates), control
// characters and invalid UTF-8 become '_', "." and ".." and "" become "file",
// and the result is at most 200 bytes. "../../x" becomes "x".
func SanitizeName(name string) string {
	name = strings.ReplaceAll(name, "\\", "/")
	name = strings.TrimRight(name, "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		name = name[i+1:]
	}
	name = strings.ToValidUTF8(name, "_")
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || r == '/' || r == 0 || r == utf8.RuneError {
			return '_'
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	if len(name) > maxNameBytes {
		cut := maxNameBytes
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		name = name[:cut]
	}
	if name == "" || name == "." || name == ".." {
		return "file"
	}
	return name
}
