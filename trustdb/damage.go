package trustdb

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// ErrDamaged is wrapped by the errors Open and LoadOrCreateIdentity return
// when a file of the store is damaged, missing while the rest of the store
// exists, or unsafe (a key file others can read). Nothing was changed or
// created; the *DamagedError says what is wrong and how to restore.
var ErrDamaged = errors.New("trustdb: damaged state")

// BackupFile is the last good copy of the trust database, in the store
// directory: written (atomically) after every Open that verified the
// database, and by Close.
const BackupFile = DatabaseFile + ".bak"

// DamagedError describes damaged state found on disk. It matches ErrDamaged
// with errors.Is.
type DamagedError struct {
	// Path is the damaged (or missing) file.
	Path string
	// Reason says what is wrong with it.
	Reason string
	// Backup is the last good copy of the trust database if it exists and
	// itself verifies ("" otherwise), and BackupTime when it was written.
	Backup     string
	BackupTime time.Time
	// Err is the underlying error, if any.
	Err error

	hint string // replaces the default hint
}

func (e *DamagedError) Error() string {
	return "trustdb: " + e.Path + ": " + e.Reason
}

// Unwrap returns the underlying error.
func (e *DamagedError) Unwrap() error { return e.Err }

// Is reports whether target is ErrDamaged.
func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// Hint says how to recover, for a person: what to move aside and what to
// restore. Nothing was changed, so the damaged file is still there to
// examine.
func (e *DamagedError) Hint() string {
	if e.hint != "" {
		return e.hint
	}
	dir := filepath.Dir(e.Path)
	switch filepath.Base(e.Path) {
	case IdentityFile:
		return fmt.Sprintf("the agent's identity (its private key, and so its address) is in %s: restore that file from your own backup; "+
			"to start over as a new agent with a new address instead, move the whole directory %s aside", e.Path, dir)
	case DatabaseFile:
		_, statErr := os.Lstat(e.Path)
		if e.Backup != "" && errors.Is(statErr, fs.ErrNotExist) {
			return fmt.Sprintf("stop the daemon, restore the last good copy from %s (cp %s %s), and start again; trust changes made after that copy are lost",
				e.BackupTime.Local().Format(time.DateTime), e.Backup, e.Path)
		}
		if e.Backup != "" {
			return fmt.Sprintf("stop the daemon, keep the damaged file (mv %s %s.damaged), restore the last good copy from %s (cp %s %s), and start again; "+
				"trust changes made after that copy are lost", e.Path, e.Path, e.BackupTime.Local().Format(time.DateTime), e.Backup, e.Path)
		}
		return fmt.Sprintf("restore %s from your own backup (no verified copy %s exists); to start over with the same identity but no trust records, "+
			"move %s aside: peers then need new trust requests", e.Path, filepath.Join(dir, BackupFile), e.Path)
	}
	return "restore " + e.Path + " from a backup, or move it aside"
}

// damaged returns a *DamagedError for path, with the store directory's
// backup if it verifies.
func damaged(path, reason string, err error) *DamagedError {
	e := &DamagedError{Path: path, Reason: reason, Err: err}
	if filepath.Base(path) == DatabaseFile {
		bak := filepath.Join(filepath.Dir(path), BackupFile)
		if fi, err := os.Stat(bak); err == nil && verifyBackup(bak) == nil {
			e.Backup, e.BackupTime = bak, fi.ModTime()
		}
	}
	return e
}

func verifyBackup(path string) error {
	_, err := verifyBolt(path)
	return err
}
