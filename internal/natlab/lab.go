package natlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Kind is the NAT behaviour of a site's router.
type Kind string

// The kinds of site. Mapping and filtering are named as in RFC 4787.
const (
	// KindNone is no NAT: the site's hosts have public addresses and the
	// router only routes.
	KindNone Kind = "none"
	// KindHome is the typical home router: endpoint-independent mapping and
	// address-and-port-dependent filtering.
	KindHome Kind = "home"
	// KindSymmetric is endpoint-dependent mapping: a new public port for
	// every destination.
	KindSymmetric Kind = "symmetric"
	// KindCone is a full cone: endpoint-independent mapping and
	// endpoint-independent filtering (anyone may send to a mapped port).
	KindCone Kind = "cone"
	// KindDouble is a carrier-grade NAT (home-like) in front of a home NAT.
	KindDouble Kind = "double"
)

// Kinds lists every Kind, in a stable order. Callers must not modify it.
var Kinds = []Kind{KindNone, KindHome, KindSymmetric, KindCone, KindDouble}

func (k Kind) valid() bool {
	for _, v := range Kinds {
		if k == v {
			return true
		}
	}
	return false
}

// Addresses of the lab. The internet is one bridge, 198.18.0.0/16, whose
// namespace also routes the public LANs of KindNone sites (198.19.S.0/24).
var (
	internetGW   = netip.MustParseAddr("198.18.0.1")
	internetBits = 16
	firstWAN     = netip.MustParseAddr("198.18.1.1")
)

// Limits of one lab.
const (
	maxSites        = 250
	maxHostsPerSite = 200
	maxWAN          = 60000
)

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

var available = sync.OnceValue(func() error {
	if os.Geteuid() != 0 {
		return errors.New("natlab: needs root (network namespaces, nftables)")
	}
	for _, tool := range []string{"ip", "tc", "nft", "conntrack"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("natlab: %s not found (apt-get install -y iproute2 nftables conntrack): %w", tool, err)
		}
	}
	if _, err := os.Stat("/proc/thread-self/ns/net"); err != nil {
		return fmt.Errorf("natlab: no network namespaces: %w", err)
	}
	return nil
})

// Available reports whether labs can be built here: nil if the process is
// root and ip, tc (iproute2), nft and conntrack are installed.
func Available() error { return available() }

// Require skips the test when labs cannot be built here. When the
// environment has CI=true a missing capability fails the test instead: the
// NAT lab is required in CI.
func Require(tb testing.TB) {
	tb.Helper()
	if err := Available(); err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("%v (required when CI=true)", err)
		}
		tb.Skipf("skipping NAT lab test: %v", err)
	}
}

// claimDir holds one file per live lab, named by its id, holding the PID of
// the process that owns it, so that a later lab can remove what a killed test
// process left behind.
const claimDir = "/run/natlab"

// Lab is a small internet made of network namespaces: one "internet"
// namespace with a bridge, public hosts on it, and sites (a NAT router and
// its LAN) behind it. Everything is removed when the test that built it ends.
//
// Methods may be called from several goroutines; building (New, AddPublicHost,
// AddSite, AddHost) is serialised.
type Lab struct {
	tb   testing.TB
	id   string
	inet *Host

	mu       sync.Mutex
	names    map[string]bool // lab-unique host and site names
	all      []*netns        // every namespace, for teardown
	cmds     []*exec.Cmd     // from Host.Command, killed at teardown
	nextWAN  int
	nextSite int
	nextPort int
	closed   bool
}

// New builds an empty lab (the internet namespace and its bridge) and
// registers its teardown with tb.Cleanup: processes left in the lab's
// namespaces are killed and the namespaces deleted. Namespace names start
// with "nl" and a random 4-hex lab id, so labs can run side by side. New
// fails the test if labs are not available; call Require first to skip
// instead.
func New(tb testing.TB) *Lab {
	tb.Helper()
	if err := Available(); err != nil {
		tb.Fatal(err)
	}
	sweepStale()
	id, err := claimID()
	if err != nil {
		tb.Fatal(err)
	}
	l := &Lab{tb: tb, id: id, names: map[string]bool{}}
	tb.Cleanup(l.close)

	ns := l.nsName("inet")
	err = runIP(context.Background(), "", []string{
		"netns add " + ns,
		"link add " + lanIf + " netns " + ns + " type bridge",
	})
	if err == nil {
		l.inet, err = l.open(ns, "inet", internetGW)
	}
	if err == nil {
		err = l.inet.ns.baseSysctls(true)
	}
	if err == nil {
		err = runIP(context.Background(), ns, []string{
			"link set lo up",
			fmt.Sprintf("addr add %s/%d dev %s", internetGW, internetBits, lanIf),
			"link set " + lanIf + " up",
		})
	}
	if err != nil {
		tb.Fatal(err)
	}
	return l
}

// ID returns the lab's id, the part after "nl" in its namespace names.
func (l *Lab) ID() string { return l.id }

// Internet returns the namespace that holds the internet bridge and routes
// to the public LANs (handy for tcpdump -i br0).
func (l *Lab) Internet() *Host { return l.inet }

func (l *Lab) nsName(name string) string { return "nl" + l.id + "-" + name }

// open opens a namespace just created and records it for teardown.
func (l *Lab) open(ns, name string, ip netip.Addr) (*Host, error) {
	n, err := openNetns(ns)
	if err != nil {
		return nil, err
	}
	l.all = append(l.all, n)
	return &Host{lab: l, name: name, ns: n, ip: ip}, nil
}

func (l *Lab) reserve(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("natlab: bad name %q (want [a-z0-9-], at most 32)", name)
	}
	if l.closed {
		return errors.New("natlab: lab is closed")
	}
	if l.names[name] {
		return fmt.Errorf("natlab: name %q already used in this lab", name)
	}
	l.names[name] = true
	return nil
}

func (l *Lab) allocWAN() (netip.Addr, error) {
	if l.nextWAN >= maxWAN {
		return netip.Addr{}, errors.New("natlab: out of public addresses")
	}
	a := firstWAN
	for range l.nextWAN {
		a = a.Next()
	}
	l.nextWAN++
	return a, nil
}

func (l *Lab) port() string {
	l.nextPort++
	return "p" + strconv.Itoa(l.nextPort)
}

// AddPublicHost adds a host directly on the internet, with a public address
// (198.18.x.y), such as a rendezvous server. It fails the test given to New
// on error, so call it from that test's goroutine.
func (l *Lab) AddPublicHost(name string) *Host {
	l.tb.Helper()
	h, err := l.addPublicHost(name)
	if err != nil {
		l.tb.Fatal(err)
	}
	return h
}

func (l *Lab) addPublicHost(name string) (*Host, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reserve(name); err != nil {
		return nil, err
	}
	ip, err := l.allocWAN()
	if err != nil {
		return nil, err
	}
	ns := l.nsName(name)
	port := l.port()
	err = runIP(context.Background(), "", []string{
		"netns add " + ns,
		fmt.Sprintf("link add %s netns %s type veth peer name eth0 netns %s", port, l.inet.ns.name, ns),
	})
	if err != nil {
		return nil, err
	}
	h, err := l.open(ns, name, ip)
	if err != nil {
		return nil, err
	}
	err = parallel(
		func() error { return attachPort(l.inet, port, false) },
		func() error {
			if err := h.ns.baseSysctls(false); err != nil {
				return err
			}
			return runIP(context.Background(), ns, hostLines("eth0", netip.PrefixFrom(ip, internetBits), internetGW))
		},
	)
	if err != nil {
		return nil, err
	}
	return h, nil
}

// attachPort enslaves a new veth end to the bridge of parent and brings it
// up, isolated from the bridge's other isolated ports if isolated.
func attachPort(parent *Host, port string, isolated bool) error {
	lines := []string{"link set " + port + " master " + lanIf}
	if isolated {
		lines = append(lines, isolateLine(port))
	}
	return runIP(context.Background(), parent.ns.name, append(lines, "link set "+port+" up"))
}

// isolateLine makes a bridge port isolated: the bridge forwards nothing
// between two isolated ports, only between them and the bridge itself or
// non-isolated ports.
func isolateLine(port string) string {
	return "link set " + port + " type bridge_slave isolated on"
}

func hostLines(dev string, addr netip.Prefix, gw netip.Addr) []string {
	return []string{
		"link set lo up",
		fmt.Sprintf("addr add %s dev %s", addr, dev),
		"link set " + dev + " up",
		"route add default via " + gw.String(),
	}
}

// AddSite adds a site: a router of the given kind on the internet and an
// empty LAN behind it (192.168.S.0/24, or public 198.19.S.0/24 for
// KindNone). KindDouble adds a carrier router (10.S.0.0/24 on its inside) in
// front of the home router. It fails the test given to New on error, so
// call it from that test's goroutine.
func (l *Lab) AddSite(name string, kind Kind) *Site {
	l.tb.Helper()
	s, err := l.addSite(name, kind)
	if err != nil {
		l.tb.Fatal(err)
	}
	return s
}

func (l *Lab) addSite(name string, kind Kind) (*Site, error) {
	if !kind.valid() {
		return nil, fmt.Errorf("natlab: unknown kind %q", kind)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.reserve(name); err != nil {
		return nil, err
	}
	if l.nextSite >= maxSites {
		return nil, errors.New("natlab: too many sites")
	}
	l.nextSite++
	idx := l.nextSite
	wan, err := l.allocWAN()
	if err != nil {
		return nil, err
	}
	s := &Site{lab: l, name: name, kind: kind}
	if kind == KindNone {
		s.lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(idx), 0}), 24)
	} else {
		s.lan = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 168, byte(idx), 0}), 24)
	}

	type spec struct {
		ns, name   string
		kind       Kind
		parent     *Host // nil: the router attaches to a router created here
		wan        netip.Prefix
		gw         netip.Addr
		lan        netip.Prefix // router address and LAN prefix length
		routeOnNet []string     // lines for the parent namespace
	}
	var specs []*spec
	if kind == KindDouble {
		carrierLAN := netip.AddrFrom4([4]byte{10, byte(idx), 0, 1})
		specs = append(specs,
			&spec{ns: l.nsName(name + "-cgn"), name: name + "-cgn", kind: KindHome, parent: l.inet,
				wan: netip.PrefixFrom(wan, internetBits), gw: internetGW, lan: netip.PrefixFrom(carrierLAN, 24)},
			&spec{ns: l.nsName(name), name: name, kind: KindHome,
				wan: netip.PrefixFrom(carrierLAN.Next(), 24), gw: carrierLAN,
				lan: netip.PrefixFrom(s.lan.Addr().Next(), 24)})
	} else {
		sp := &spec{ns: l.nsName(name), name: name, kind: kind, parent: l.inet,
			wan: netip.PrefixFrom(wan, internetBits), gw: internetGW, lan: netip.PrefixFrom(s.lan.Addr().Next(), 24)}
		if kind == KindNone {
			sp.routeOnNet = []string{fmt.Sprintf("route add %s via %s", s.lan, wan)}
		}
		specs = append(specs, sp)
	}

	var root []string
	ports := make([]string, len(specs))
	for _, sp := range specs {
		root = append(root,
			"netns add "+sp.ns,
			fmt.Sprintf("link add %s netns %s type bridge", lanIf, sp.ns))
	}
	for i, sp := range specs {
		parentNS := l.inet.ns.name
		if sp.parent == nil {
			parentNS = specs[i-1].ns
		}
		ports[i] = l.port()
		root = append(root, fmt.Sprintf("link add %s netns %s type veth peer name %s netns %s", ports[i], parentNS, wanIf, sp.ns))
	}
	if err := runIP(context.Background(), "", root); err != nil {
		return nil, err
	}
	routers := make([]*router, len(specs))
	for i, sp := range specs {
		h, err := l.open(sp.ns, sp.name, sp.wan.Addr())
		if err != nil {
			return nil, err
		}
		up := l.inet
		if sp.parent == nil {
			up = routers[i-1].host
		}
		routers[i] = &router{host: h, kind: sp.kind, gw: sp.gw, lanAddr: sp.lan.Addr(),
			uplink: up, uplinkPort: ports[i], mapTimeout: defaultMapTimeout}
	}
	var jobs []func() error
	for i, sp := range specs {
		r := routers[i]
		parent, port := r.uplink, r.uplinkPort
		jobs = append(jobs, func() error {
			if err := attachPort(parent, port, false); err != nil {
				return err
			}
			return runIP(context.Background(), parent.ns.name, sp.routeOnNet)
		}, func() error {
			if err := r.host.ns.baseSysctls(true); err != nil {
				return err
			}
			err := runIP(context.Background(), sp.ns, []string{
				"link set lo up",
				fmt.Sprintf("addr add %s dev %s", sp.wan, wanIf),
				"link set " + wanIf + " up",
				"route add default via " + sp.gw.String(),
				fmt.Sprintf("addr add %s dev %s", sp.lan, lanIf),
				"link set " + lanIf + " up",
			})
			if err != nil {
				return err
			}
			_, err = r.host.ns.exec(context.Background(), rulesetFor(r.kind), "nft", "-f", "-")
			return err
		})
	}
	if err := parallel(jobs...); err != nil {
		return nil, err
	}
	s.outer = routers[0]
	s.gw = routers[len(routers)-1]
	return s, nil
}

// parallel runs fns concurrently and returns their errors joined.
func parallel(fns ...func() error) error {
	errs := make([]error, len(fns))
	var wg sync.WaitGroup
	for i, fn := range fns {
		wg.Go(func() { errs[i] = fn() })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *Lab) track(cmd *exec.Cmd) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cmds = append(l.cmds, cmd)
}

// close tears the lab down: kill what runs inside, delete the namespaces.
func (l *Lab) close() {
	l.mu.Lock()
	l.closed = true
	all, cmds := l.all, l.cmds
	l.all, l.cmds = nil, nil
	l.mu.Unlock()

	// A command may not have entered its namespace yet ("ip netns exec"
	// joins it after starting), so kill the ones we know of by process.
	for _, c := range cmds {
		if c.Process != nil { // Kill after Wait is harmless (os.ErrProcessDone)
			_ = c.Process.Kill()
		}
	}

	for _, n := range all {
		n.close()
	}
	if err := removeLab(l.id); err != nil {
		l.tb.Errorf("natlab: teardown of lab %s: %v", l.id, err)
	}
}

// removeLab kills every process in the namespaces of lab id and deletes
// them (all of them, including any a failed build left unopened), then its
// claim.
func removeLab(id string) error {
	names, _ := filepath.Glob(filepath.Join(netnsDir, "nl"+id+"-*"))
	inos := map[uint64]bool{}
	for _, name := range names {
		if n, err := openNetns(filepath.Base(name)); err == nil {
			inos[n.ino] = true
			n.close()
		}
	}
	killIn(inos)
	var errs []error
	for _, name := range names {
		errs = append(errs, deleteNetns(filepath.Base(name)))
	}
	if err := os.Remove(filepath.Join(claimDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// killIn kills every process in the given namespaces and waits briefly for
// them to go.
func killIn(inos map[uint64]bool) {
	pids := pidsIn(inos)
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(pids) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
		pids = pidsIn(inos)
	}
}

// claimID picks a random lab id and claims it with an exclusive file in
// claimDir, so two test processes never share one.
func claimID() (string, error) {
	if err := os.MkdirAll(claimDir, 0o755); err != nil {
		return "", fmt.Errorf("natlab: %w", err)
	}
	for range 100 {
		var b [2]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		if m, _ := filepath.Glob(filepath.Join(netnsDir, "nl"+id+"-*")); len(m) > 0 {
			continue
		}
		f, err := os.OpenFile(filepath.Join(claimDir, id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("natlab: claim lab id: %w", err)
		}
		_, err = fmt.Fprintf(f, "%d\n", os.Getpid())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return "", fmt.Errorf("natlab: claim lab id: %w", err)
		}
		return id, nil
	}
	return "", errors.New("natlab: no free lab id")
}

// sweepStale removes the namespaces of labs whose owning process is gone (a
// test binary killed before its cleanups ran).
func sweepStale() {
	ents, err := os.ReadDir(claimDir)
	if err != nil {
		return
	}
	for _, e := range ents {
		p := filepath.Join(claimDir, e.Name())
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
			continue // owner still alive
		}
		_ = removeLab(e.Name())
	}
}
