package trustdb

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/agentnet/agentnet/addressing"
	"github.com/stretchr/testify/require"
	bolt "go.etcd.io/bbolt"
)

// The crash test runs a child process (this test binary, TestCrashChild)
// that writes to a store as fast as it can and reports each committed write
// on stdout, kills it with SIGKILL at a random moment, and checks the store
// it left behind. The same store is reused for every round, so each child
// also has to recover from where the last one died.
//
// The child walks peers 0, 1, 2, ... and for peer i commits, in order:
//
//	op 1  Request(peer i's address)            pending-out, request queued
//	op 2  HandleMessage(peer i's approve)      trusted
//	op 3  Revoke(peer i), even i only          revoked, revoke queued
//	op 4  SetMeta("progress", i)
//
// printing "done i op" after each. Every peer's state on disk maps to how
// many of its ops committed, so the whole store maps to a count of committed
// ops, which must be a gap-free prefix and at least what the child reported
// (and at most one more: the child may die between a commit and its print).

const crashEnv = "TRUSTDB_CRASH_CHILD_DIR"

func crashPeer(i int) *Identity {
	seed := sha256.Sum256(binary.BigEndian.AppendUint64([]byte("agentnet crash peer"), uint64(i)))
	return identityFromSeed(seed[:])
}

func crashOps(i int) int {
	if i%2 == 0 {
		return 4
	}
	return 3
}

func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("run by TestCrash")
	}
	s, err := Open(dir)
	if err != nil {
		fmt.Println("open error:", err)
		os.Exit(3)
	}
	out := bufio.NewWriter(os.Stdout)
	report := func(i, op int) {
		fmt.Fprintf(out, "done %d %d\n", i, op)
		out.Flush()
	}
	fail := func(err error) {
		fmt.Fprintln(out, "error:", err)
		out.Flush()
		os.Exit(3)
	}
	us := addressing.TargetAddr(s.Identity().Addr())
	deadline := time.Now().Add(30 * time.Second) // in case the parent is gone
	for i := 0; time.Now().Before(deadline); i++ {
		peer := crashPeer(i)
		state, pending := crashPeerState(s, i)
		done := crashOpsDone(i, state, pending, s)
		if done == crashOps(i) {
			continue
		}
		for op := done + 1; op <= crashOps(i); op++ {
			switch {
			case op == 1:
				_, err = s.Request(addressing.TargetAddr(peer.Addr()), "", strconv.Itoa(i))
			case op == 2:
				_, p := crashPeerState(s, i)
				var m *Message
				m, err = NewMessage(peer, KindApprove, us, p.Nonce, "", "")
				if err == nil {
					_, err = s.HandleMessage(m, "")
				}
			case op == 3 && i%2 == 0:
				_, err = s.Revoke(peer.PublicKey(), "")
			default:
				err = s.SetMeta("progress", []byte(strconv.Itoa(i)))
			}
			if err != nil {
				fail(fmt.Errorf("peer %d op %d: %w", i, op, err))
			}
			report(i, op)
		}
	}
	s.Close()
}

// crashPeerState returns peer i's record state (0 if none) and our
// pending-out request to it, if any.
func crashPeerState(s *Store, i int) (State, Record) {
	peer := crashPeer(i)
	var pending Record
	if r, ok := s.Get(peer.PublicKey()); ok {
		return r.State, pending
	}
	for _, r := range s.List() {
		if r.State == StatePendingOut && r.Target == peer.Addr().String() {
			pending = r
		}
	}
	return 0, pending
}

// crashOpsDone maps what the store holds about peer i to the number of its
// ops committed.
func crashOpsDone(i int, state State, pending Record, s *Store) int {
	n := 0
	switch {
	case state == StateRevoked:
		n = 3
	case state == StateTrusted:
		n = 2
	case pending.State == StatePendingOut:
		n = 1
	}
	if n == crashOps(i)-1 { // all but SetMeta
		if v, ok := s.Meta("progress"); ok {
			if p, err := strconv.Atoi(string(v)); err == nil && p >= i {
				n++
			}
		}
	}
	return n
}

func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if os.Getenv(crashEnv) != "" {
		t.Skip("in the child")
	}
	dir := t.TempDir()
	s, err := Open(dir)
	require.NoError(t, err)
	id := s.Identity().PublicKey()
	require.NoError(t, s.Close())

	reported := 0 // ops the children reported committed, over all rounds
	for round := range 5 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		t.Cleanup(func() { cmd.Process.Kill() })

		killAfter := 5 + rand.IntN(60) // lines
		sc := bufio.NewScanner(stdout)
		lines, killed := 0, false
		for sc.Scan() {
			line := sc.Text()
			var i, op int
			if _, err := fmt.Sscanf(line, "done %d %d", &i, &op); err != nil {
				require.NotContains(t, line, "error", "child failed")
				continue
			}
			// Ops are reported in order, without gaps, across rounds.
			require.Equal(t, reported, crashOpIndex(i, op)-1, "round %d: %q", round, line)
			reported++
			lines++
			if lines == killAfter && !killed {
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
				require.NoError(t, cmd.Process.Kill()) // SIGKILL
				killed = true
			}
		}
		err = cmd.Wait()
		require.True(t, killed, "child exited by itself: %v", err)
		require.Error(t, err)

		committed := checkCrashStore(t, dir, id)
		t.Logf("round %d: child reported %d ops in total, %d committed", round, reported, committed)
		require.GreaterOrEqual(t, committed, reported, "every reported write survives")
		require.LessOrEqual(t, committed, reported+1, "at most one write committed but not reported")
		reported = committed // the next child continues from what is on disk
	}
}

// crashOpIndex numbers op (1-based) of peer i among all ops.
func crashOpIndex(i, op int) int {
	n := 0
	for j := range i {
		n += crashOps(j)
	}
	return n + op
}

// checkCrashStore opens the store a child left behind, checks it is
// consistent, and returns the number of ops committed.
func checkCrashStore(t *testing.T, dir string, id addressing.PublicKey) int {
	t.Helper()
	s, err := Open(dir)
	require.NoError(t, err, "reopen after SIGKILL")
	defer func() { require.NoError(t, s.Close()) }()
	require.Equal(t, id, s.Identity().PublicKey(), "identity unchanged")

	// Every record and outbox item parses; records are filed right.
	var records, pendingOut int
	var requests, revokes int
	require.NoError(t, s.db.View(func(tx *bolt.Tx) error {
		require.NoError(t, tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
			r, err := ParseRecord(v)
			require.NoError(t, err)
			require.Equal(t, k, r.Key[:])
			require.Equal(t, r.State == StateTrusted, s.IsTrusted(r.Key), "mirror matches disk")
			records++
			return nil
		}))
		require.NoError(t, tx.Bucket(bucketPending).ForEach(func(k, v []byte) error {
			r, err := ParseRecord(v)
			require.NoError(t, err)
			require.Equal(t, k, r.Nonce[:])
			require.Equal(t, StatePendingOut, r.State)
			pendingOut++
			return nil
		}))
		return tx.Bucket(bucketOutbox).ForEach(func(k, v []byte) error {
			m, err := ParseMessage(v)
			require.NoError(t, err)
			require.NoError(t, m.Verify())
			require.Equal(t, id, m.From)
			switch m.Kind {
			case KindRequest:
				requests++
			case KindRevoke:
				revokes++
			default:
				t.Fatalf("unexpected %s in the outbox", m.Kind)
			}
			return nil
		})
	}))
	require.LessOrEqual(t, pendingOut, 1)

	// Committed ops form a gap-free prefix.
	committed, revoked := 0, 0
	for i := 0; ; i++ {
		state, pending := crashPeerState(s, i)
		done := crashOpsDone(i, state, pending, s)
		if state == StateRevoked {
			revoked++
		}
		committed += done
		if done < crashOps(i) {
			for j := i + 1; j < i+3; j++ {
				st, p := crashPeerState(s, j)
				require.Zero(t, st, "peer %d has a record after unfinished peer %d", j, i)
				require.Zero(t, p.State, "peer %d has a request after unfinished peer %d", j, i)
			}
			require.Equal(t, records+pendingOut, i+min(done, 1), "records: one per peer touched")
			break
		}
	}
	// The outbox was written in the same transaction as each state change.
	require.Equal(t, records+pendingOut, requests, "one queued request per peer")
	require.Equal(t, revoked, revokes, "one queued revoke per revoked peer")
	return committed
}
