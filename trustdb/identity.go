package trustdb

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/agentnet/agentnet/addressing"
)

// Identity is an agent's Ed25519 key pair. It is immutable and safe for
// concurrent use. Its String, GoString and Format methods print only public
// information: the private key is never printed, whatever the verb. The zero
// Identity is not usable; get one from GenerateIdentity,
// IdentityFromPrivateKey or LoadOrCreateIdentity.
type Identity struct {
	pub  addressing.PublicKey
	node addressing.NodeID
	// priv returns the private key (not a copy). It is a closure so that
	// even a reflection-based printer that bypasses Format (an Identity
	// nested by value in a struct, or a bad verb) prints a code address,
	// never key bytes.
	priv func() ed25519.PrivateKey
}

// GenerateIdentity returns a new random identity.
func GenerateIdentity() (*Identity, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("trustdb: generate identity: %w", err)
	}
	return IdentityFromPrivateKey(priv)
}

// IdentityFromPrivateKey returns the identity of priv. It checks that priv is
// a well-formed Ed25519 private key (seed and public half agree). The
// Identity keeps its own copy of priv.
func IdentityFromPrivateKey(priv ed25519.PrivateKey) (*Identity, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("trustdb: private key is %d bytes, want %d", len(priv), ed25519.PrivateKeySize)
	}
	full := ed25519.NewKeyFromSeed(priv.Seed())
	if !bytes.Equal(full, priv) {
		return nil, errors.New("trustdb: private key: public half does not match the seed")
	}
	return identityFromSeed(priv.Seed()), nil
}

func identityFromSeed(seed []byte) *Identity {
	priv := ed25519.NewKeyFromSeed(seed)
	pub, _ := addressing.PublicKeyFrom(priv.Public().(ed25519.PublicKey))
	return &Identity{pub: pub, node: pub.NodeID(), priv: func() ed25519.PrivateKey { return priv }}
}

// PublicKey returns the identity's public key.
func (id *Identity) PublicKey() addressing.PublicKey { return id.pub }

// NodeID returns the NodeID derived from the public key.
func (id *Identity) NodeID() addressing.NodeID { return id.node }

// Addr returns the identity's address in network 0.
func (id *Identity) Addr() addressing.Addr { return addressing.AddrFrom(0, id.node) }

// PrivateKey returns a copy of the private key, for building TLS certificates
// only. Never log or print it.
func (id *Identity) PrivateKey() ed25519.PrivateKey {
	return append(ed25519.PrivateKey(nil), id.priv()...)
}

// Sign returns the Ed25519 signature of msg.
func (id *Identity) Sign(msg []byte) []byte { return ed25519.Sign(id.priv(), msg) }

// String returns "identity 0:xxxx.xxxx.xxxx key=<public key>".
func (id *Identity) String() string {
	if id == nil || id.priv == nil {
		return "identity <nil>"
	}
	return "identity " + id.Addr().String() + " key=" + id.pub.String()
}

// GoString is String, so %#v prints no private key.
func (id *Identity) GoString() string { return id.String() }

// Format implements fmt.Formatter: every verb prints String.
func (id *Identity) Format(f fmt.State, verb rune) { _, _ = f.Write([]byte(id.String())) }

// Key file format (text, one field per line, every line required, in order):
//
//	agentnet identity v1
//	seed <32-byte Ed25519 seed, unpadded base64url>
//	public <public key, unpadded base64url; checked against the seed>
//
// The public line lets a reader detect a corrupted or hand-edited file.
const keyFileMagic = "agentnet identity v1"

func encodeKeyFile(id *Identity) []byte {
	var b bytes.Buffer
	b.WriteString(keyFileMagic + "\n")
	b.WriteString("seed " + base64.RawURLEncoding.EncodeToString(id.priv().Seed()) + "\n")
	b.WriteString("public " + id.pub.String() + "\n")
	return b.Bytes()
}

func decodeKeyFile(b []byte) (*Identity, error) {
	if len(b) > 512 {
		return nil, errors.New("file too large")
	}
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) != 4 || len(lines[3]) != 0 {
		return nil, errors.New("want 3 newline-terminated lines")
	}
	if string(lines[0]) != keyFileMagic {
		return nil, fmt.Errorf("first line is not %q (unknown format or version)", keyFileMagic)
	}
	seedText, ok := bytes.CutPrefix(lines[1], []byte("seed "))
	if !ok {
		return nil, errors.New("second line does not start with \"seed \"")
	}
	seed, err := base64.RawURLEncoding.Strict().DecodeString(string(seedText))
	if err != nil || len(seed) != ed25519.SeedSize {
		return nil, errors.New("malformed seed")
	}
	pubText, ok := bytes.CutPrefix(lines[2], []byte("public "))
	if !ok {
		return nil, errors.New("third line does not start with \"public \"")
	}
	pub, err := addressing.ParsePublicKey(string(pubText))
	if err != nil {
		return nil, errors.New("malformed public key")
	}
	id := identityFromSeed(seed)
	if id.pub != pub {
		return nil, errors.New("public key does not match the seed (corrupted file?)")
	}
	return id, nil
}

// LoadOrCreateIdentity loads the identity stored at path, or, if there is no
// file, creates a new one and stores it there (created reports which).
//
// The file is written atomically with mode 0600: a temporary file in the same
// directory is written and fsynced, then linked into place (which, unlike a
// rename, never replaces a key another process created meanwhile; if linking
// is not supported it falls back to rename), and the directory is fsynced.
// An existing file whose permissions are wider than 0600 (any group or other
// bit) is refused, as is a file with malformed contents, with a
// *DamagedError (errors.Is ErrDamaged); neither is ever overwritten.
func LoadOrCreateIdentity(path string) (id *Identity, created bool, err error) {
	id, err = loadIdentity(path)
	if err == nil {
		return id, false, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, false, err
	}
	id, err = GenerateIdentity()
	if err != nil {
		return nil, false, err
	}
	switch err := writeKeyFile(path, encodeKeyFile(id)); {
	case errors.Is(err, fs.ErrExist):
		// Another process created it first: use theirs.
		id, err = loadIdentity(path)
		return id, false, err
	case err != nil:
		return nil, false, err
	}
	return id, true, nil
}

func loadIdentity(path string) (*Identity, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		return nil, fmt.Errorf("trustdb: open identity key file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("trustdb: identity key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, &DamagedError{Path: path, Reason: fmt.Sprintf("the identity key file is not a regular file (mode %s)", fi.Mode())}
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, &DamagedError{Path: path,
			Reason: fmt.Sprintf("the identity key file has mode %#o, which lets other users read the private key; want 0600", perm),
			hint:   fmt.Sprintf("chmod 600 %s, if no one else could read it meanwhile (else start over as a new agent: move %s aside)", path, filepath.Dir(path))}
	}
	b, err := io.ReadAll(io.LimitReader(f, 513))
	if err != nil {
		return nil, fmt.Errorf("trustdb: read identity key file %s: %w", path, err)
	}
	id, err := decodeKeyFile(b)
	if err != nil {
		return nil, &DamagedError{Path: path, Reason: "the identity key file is malformed: " + err.Error(), Err: err}
	}
	return id, nil
}

// writeKeyFile writes data to path atomically with mode 0600 and fsyncs the
// directory. It returns an error wrapping fs.ErrExist if path exists.
func writeKeyFile(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("trustdb: create identity key file: %w", err)
	}
	tmpName := tmp.Name()
	defer func() {
		tmp.Close()
		os.Remove(tmpName)
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("trustdb: create identity key file: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("trustdb: write identity key file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("trustdb: sync identity key file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("trustdb: write identity key file: %w", err)
	}
	if err := os.Link(tmpName, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("trustdb: identity key file %s: %w", path, fs.ErrExist)
		}
		// No hard links on this file system: rename (atomic, may replace).
		if err := os.Rename(tmpName, path); err != nil {
			return fmt.Errorf("trustdb: install identity key file: %w", err)
		}
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("trustdb: sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("trustdb: sync directory %s: %w", dir, err)
	}
	return nil
}
