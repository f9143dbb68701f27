package rendezvous_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/agentnet/agentnet/internal/etcdtest"
	"github.com/agentnet/agentnet/rendezvous"
	"github.com/agentnet/agentnet/rendezvous/rendezvoustest"
)

// The rendezvous suite is table-driven over the two stores: every test of
// this package runs on bbolt (as written), and TestSuiteOnEtcd runs the
// ones that use a store again on an EtcdStore backed by a three-member
// embedded etcd cluster. TestSuiteCoversEveryTest fails when a test is
// added to the package without a row here.

// suite lists the tests that run on the etcd store too.
var suite = []struct {
	name string
	f    func(*testing.T)
}{
	{"RegisterLookupTrustedPair", TestRegisterLookupTrustedPair},
	{"RejectNotDeliveredAndNoPair", TestRejectNotDeliveredAndNoPair},
	{"PrivacySameBytes", TestPrivacySameBytes},
	{"RequestByHostnameToPrivateAgent", TestRequestByHostnameToPrivateAgent},
	{"ReplayAndForgeryRefused", TestReplayAndForgeryRefused},
	{"MailboxForOfflineAgent", TestMailboxForOfflineAgent},
	{"DeliverErrorKeepsMessage", TestDeliverErrorKeepsMessage},
	{"RestartKeepsState", TestRestartKeepsState},
	{"CrashRestart", TestCrashRestart},
	{"HostnameTaken", TestHostnameTaken},
	{"RateLimited", TestRateLimited},
	{"MaxAgents", TestMaxAgents},
	{"PendingLimitDropsSilently", TestPendingLimitDropsSilently},
	{"BadFramesDoNotHurtOthers", TestBadFramesDoNotHurtOthers},
	{"Pinning", TestPinning},
	{"ConnectIntroducesBoth", TestConnectIntroducesBoth},
	{"ConnectPeerNAT", TestConnectPeerNAT},
	{"ConnectNotFoundSameBytes", TestConnectNotFoundSameBytes},
	{"RelayGrantAndRevoke", TestRelayGrantAndRevoke},
	{"PushWithoutIntroducedFunc", TestPushWithoutIntroducedFunc},
	{"NetworkMembership", TestNetworkMembership},
	{"NetworkForgedRefused", TestNetworkForgedRefused},
	{"NetworkRestartKeepsMembers", TestNetworkRestartKeepsMembers},
	{"NetworkListPages", TestNetworkListPages},
	{"NetworkJoinNoOracle", TestNetworkJoinNoOracle},
	{"PinIsPerNode", TestPinIsPerNode},
	{"SessionLossDetected", TestSessionLossDetected},
	{"TunnelStrangerLearnsNothingMore", TestTunnelStrangerLearnsNothingMore},
	{"TunnelStrangerCannotInject", TestTunnelStrangerCannotInject},
	{"SessionRestartDetectedAtOnce", TestSessionRestartDetectedAtOnce},
	{"RequestBeforeTargetRegisters", TestRequestBeforeTargetRegisters},
	{"RequestHeldForHostnameClaimedLater", TestRequestHeldForHostnameClaimedLater},
	{"RequestWhileTargetStarts", TestRequestWhileTargetStarts},
	{"HeldRequestWithdrawn", TestHeldRequestWithdrawn},
	{"CoLocatedAgentNotStarved", TestCoLocatedAgentNotStarved},
	{"MaxConnsFair", TestMaxConnsFair},
	{"MaxConnsPerKey", TestMaxConnsPerKey},
	{"RelayPerKeyLimit", TestRelayPerKeyLimit},
	{"MaxAgentsPerPrefix", TestMaxAgentsPerPrefix},
	{"TrustRequestFloodFairSockets", TestTrustRequestFloodFairSockets},
}

// notOnStore lists the tests that do not touch a store (STUN, sockets,
// server lifecycle without rendezvoustest) or are about the etcd store
// itself, with the reason.
var notOnStore = map[string]string{
	"TestSTUNBothPorts":             "STUN only",
	"TestSTUNBesideQUIC":            "STUN only",
	"TestSTUNRateLimit":             "STUN only",
	"TestSideSockets":               "sockets only",
	"TestCloseAndShutdown":          "servers with their own temporary bbolt store",
	"TestDamagedStoreRefused":       "damages a bbolt file; TestEtcdPrefixRefused is the etcd store's",
	"TestStoreAndIdentityMustMatch": "runs its Store cases on both stores itself",
	"TestSuiteOnEtcd":               "this table",
	"TestSuiteCoversEveryTest":      "this check",
}

// sharedEtcd is the three-member embedded etcd cluster the tests of this
// package share (each with its own key prefix), started by TestMain:
// starting one per test would cost its start and, more, the settling of
// its goroutines after it stops.
var sharedEtcd *etcdtest.Cluster

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "rendezvous-etcd-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if sharedEtcd, err = etcdtest.New(3, etcdtest.Options{}, dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	sharedEtcd.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

// etcdCluster makes rendezvoustest give every server an EtcdStore on the
// shared cluster, one key prefix per DataDir (a restarted server finds its
// state). It undoes that in Cleanup.
func etcdCluster(t *testing.T) *etcdtest.Cluster {
	t.Helper()
	c := sharedEtcd
	rendezvoustest.StoreFunc = func(tb testing.TB, dataDir string) rendezvous.Store {
		tb.Helper()
		return openEtcd(tb, c, dataDir)
	}
	t.Cleanup(func() { rendezvoustest.StoreFunc = nil })
	return c
}

// openEtcd opens an EtcdStore on c with the key prefix of name. The caller
// closes it.
func openEtcd(tb testing.TB, c *etcdtest.Cluster, name string) *rendezvous.EtcdStore {
	tb.Helper()
	sum := sha256.Sum256([]byte(name))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := rendezvous.OpenEtcdStore(ctx, rendezvous.EtcdConfig{
		Endpoints: c.Endpoints(),
		Prefix:    "/t/" + hex.EncodeToString(sum[:6]) + "/",
		LeaseTTL:  rendezvous.DefaultEtcdLeaseTTL, // the cut-off behaviour is the cluster tests' (clusterTTL)
	})
	require.NoError(tb, err)
	return s
}

func TestSuiteOnEtcd(t *testing.T) {
	c := etcdCluster(t)
	for _, tc := range suite {
		t.Run(tc.name, tc.f)
	}
	// The suite really ran on etcd: the agents it registered are there.
	resp, err := c.Client(t).Get(context.Background(), "/t/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	require.NoError(t, err)
	require.Greater(t, resp.Count, int64(len(suite)))
}

func TestSuiteCoversEveryTest(t *testing.T) {
	files, err := filepath.Glob("*_test.go")
	require.NoError(t, err)
	listed := map[string]bool{}
	for _, tc := range suite {
		listed["Test"+tc.name] = true
	}
	n := 0
	for _, f := range files {
		file, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.SkipObjectResolution)
		require.NoError(t, err)
		if file.Name.Name != "rendezvous_test" {
			continue
		}
		for _, d := range file.Decls {
			fd, ok := d.(*ast.FuncDecl)
			if !ok || fd.Recv != nil || !strings.HasPrefix(fd.Name.Name, "Test") || fd.Name.Name == "TestMain" {
				continue
			}
			n++
			name := fd.Name.Name
			if _, ok := notOnStore[name]; !ok && !listed[name] && !strings.HasPrefix(name, "TestCluster") {
				t.Errorf("%s (%s) runs on bbolt only: add it to suite in etcd_suite_test.go, or to notOnStore with the reason", name, f)
			}
		}
	}
	require.Greater(t, n, len(suite))
}

// countGoroutines counts the goroutines of the process, but not those of
// an embedded etcd server (its members, peer and client connections come
// and go on their own schedule).
func countGoroutines() int {
	buf := make([]byte, 4<<20)
	buf = buf[:runtime.Stack(buf, true)]
	n := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if g == "" || etcdServerGoroutine(g) {
			continue
		}
		n++
	}
	return n
}

func etcdServerGoroutine(stack string) bool {
	for _, s := range []string{
		"go.etcd.io/etcd/server/", "go.etcd.io/raft/", "go.etcd.io/etcd/pkg/", "soheilhy/cmux",
		"grpc.(*Server)", "transport.(*http2Server)", "net/http.(*persistConn)", "net/http.(*conn)",
		"net/http.(*Server)", "net/http.(*connReader)", "grpc-gateway", "internal/etcdtest",
		"xiang90/probing", "fileutil.purgeFile",
	} {
		if strings.Contains(stack, s) {
			return true
		}
	}
	return false
}
