package main

// Lifecycle: the startup check of "up" (it exits non-zero with the reason
// when its socket or rendezvous cannot be set up), the readiness reports to
// a detaching parent and to systemd, "down", and "service print-unit".

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/daemon"
	"github.com/agentnet/agentnet/rendezvous"
)

// startupWait bounds how long "up" waits for the first registration at a
// rendezvous before it reports ready anyway (the node keeps retrying).
const startupWait = 5 * time.Second

// notifyEnv names the file descriptor on which a detached "up" reports to
// its parent: one JSON line, the status (ready) or an error body (failed).
const notifyEnv = "AGENTNET_UP_NOTIFY_FD"

// checkRendezvousAddr fails early when no configured rendezvous address
// resolves: the node could never register. Of several servers (a comma
// list) one that resolves is enough, as for the node, which tries the
// others when one fails.
func checkRendezvousAddr(cfg daemon.Config) error {
	addrs := cfg.RendezvousAddrs()
	var msgs []string
	for _, a := range addrs {
		if _, err := net.ResolveUDPAddr("udp", a); err != nil {
			msgs = append(msgs, fmt.Sprintf("rendezvous %s: %v", a, err))
			continue
		}
		return nil
	}
	if len(msgs) == 0 {
		return nil // none configured (zero config), or an empty list: daemon.New says so
	}
	return &ctl.Error{Code: ctl.CodeUnavailable, Message: strings.Join(msgs, "; "),
		Hint: "check --rendezvous (AGENTNET_RENDEZVOUS) and the network"}
}

// startupCheck waits up to startupWait for the first registration. A
// refusal that only the operator can fix is an error; no answer in time, or
// a first attempt that reached the rendezvous neither over UDP nor over TCP,
// is only a warning that says what was tried (the rendezvous may be down
// for a moment; the node keeps retrying and "status" shows it). The
// warning is also returned, for a detaching parent to print.
func startupCheck(ctx context.Context, d *daemon.Daemon, warn io.Writer) error {
	wctx, cancel := context.WithTimeout(ctx, startupWait)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- d.WaitRendezvous(wctx) }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for {
		select {
		case err = <-errc:
			break wait
		case <-tick.C:
			if ue := d.RendezvousUnreachable(); ue != nil {
				cancel() // ends WaitRendezvous
				<-errc
				fmt.Fprintf(warn, "agentnet up: warning: not registered: %v; retrying in the background (\"agentnet status\" shows it)\n", ue)
				return nil
			}
		}
	}
	switch {
	case err == nil, ctx.Err() != nil:
		return nil
	case errors.Is(err, rendezvous.ErrServerKey):
		return &ctl.Error{Code: ctl.CodeNotTrusted, Message: err.Error(),
			Hint: "the rendezvous presented another key than the one pinned: check --rendezvous-key, or the address"}
	case errors.Is(err, rendezvous.ErrHostnameTaken), errors.Is(err, rendezvous.ErrNodeIDTaken):
		return &ctl.Error{Code: ctl.CodeConflict, Message: err.Error(),
			Hint: "another agent holds that hostname (or node ID): choose another --hostname"}
	case wctx.Err() != nil:
		w := fmt.Sprintf("agentnet up: warning: not registered at the rendezvous %s after %v; retrying in the background (\"agentnet status\" shows it)",
			d.Status().Rendezvous.Addr, startupWait)
		if e := d.Status().Rendezvous.Error; e != "" {
			w += ": " + e
		}
		fmt.Fprintln(warn, w)
		return nil
	}
	return &ctl.Error{Code: ctl.CodeUnavailable, Message: err.Error(), Hint: "check the rendezvous settings"}
}

// upErrorCode maps an error of daemon.Run to a CLI error.
func upError(err error) error {
	var ce *ctl.Error
	var h interface{ Hint() string }
	switch {
	case errors.As(err, &ce):
		return ce
	case errors.Is(err, daemon.ErrDamaged) && errors.As(err, &h):
		return &ctl.Error{Code: ctl.CodeDamagedState, Message: err.Error(), Hint: h.Hint()}
	case errors.Is(err, daemon.ErrInUse), errors.Is(err, daemon.ErrSocketInUse):
		return &ctl.Error{Code: ctl.CodeConflict, Message: err.Error(), Hint: "a daemon already runs on this state directory or socket: use it (agentnet status), stop it (agentnet down), or give this one --state / --socket"}
	case errors.Is(err, daemon.ErrRendezvous):
		return &ctl.Error{Code: ctl.CodeUnavailable, Message: err.Error(), Hint: "the embedded rendezvous could not start: see the message; or set --rendezvous"}
	}
	return &ctl.Error{Code: ctl.CodeInternal, Message: err.Error()}
}

// notifyParent reports readiness (v is the status) or failure (v is an
// error body) to the parent of a detached "up", once.
func notifyParent(v any) {
	fdText := os.Getenv(notifyEnv)
	if fdText == "" {
		return
	}
	os.Unsetenv(notifyEnv)
	fd, err := strconv.Atoi(fdText)
	if err != nil || fd < 3 {
		return
	}
	f := os.NewFile(uintptr(fd), "notify")
	if f == nil {
		return
	}
	b, _ := json.Marshal(v)
	f.Write(append(b, '\n'))
	f.Close()
}

// sdNotify sends a state line ("READY=1", "STOPPING=1") to systemd when it
// runs us as a Type=notify service (NOTIFY_SOCKET set); otherwise it does
// nothing.
func sdNotify(state string) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	if strings.HasPrefix(sock, "@") {
		sock = "\x00" + sock[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return
	}
	defer c.Close()
	c.Write([]byte(state))
}

// DownResult is the output of "agentnet down".
type DownResult struct {
	PID      int     `json:"pid"`
	StateDir string  `json:"state_dir"`
	Stopped  bool    `json:"stopped"` // the daemon exited and its socket is gone
	Seconds  float64 `json:"seconds"` // how long it took
}

// ServiceUnit is the output of "agentnet service print-unit".
type ServiceUnit struct {
	Unit string `json:"unit"` // the unit file's text
	Path string `json:"path"` // where a user unit goes
	Name string `json:"name"` // the unit's name
}

func init() {
	registerCLI(&cliCommand{
		noun: "down", summary: "stop this state directory's daemon and wait until it has exited",
		output: DownResult{}, errors: []ctl.Code{ctl.CodeNotRunning, ctl.CodeTimeout},
		example: "agentnet down --state /tmp/alice",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			return func(x *cliCtx) (any, error) { return down(x) }
		},
		human: func(w io.Writer, v any) {
			r := v.(DownResult)
			fmt.Fprintf(w, "agentnet down: daemon %d stopped in %.2f s (%s)\n", r.PID, r.Seconds, r.StateDir)
		},
	})
	registerCLI(&cliCommand{
		noun: "service", verb: "print-unit", summary: "print a systemd user unit that runs this state directory's daemon",
		output: ServiceUnit{}, daemonless: true,
		example: "agentnet service print-unit > ~/.config/systemd/user/agentnet.service",
		setup: func(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
			name := fs.String("name", "agentnet", "unit name (without .service)")
			bin := fs.String("bin", "", "path of the agentnet binary in ExecStart (default: this binary)")
			return func(x *cliCtx) (any, error) {
				state := fs.Lookup("state").Value.String()
				if state == "" {
					state = daemon.DefaultStateDir()
				}
				state, _ = filepath.Abs(state)
				exe := *bin
				if exe == "" {
					var err error
					if exe, err = os.Executable(); err != nil {
						return nil, err
					}
				}
				if !filepath.IsAbs(exe) {
					return nil, badUsage("--bin %q: want an absolute path", exe)
				}
				if strings.ContainsAny(*name, "/ \t\n") || *name == "" {
					return nil, badUsage("--name %q: want a plain unit name", *name)
				}
				return serviceUnit(*name, exe, state), nil
			}
		},
		human: func(w io.Writer, v any) { io.WriteString(w, v.(ServiceUnit).Unit) },
	})
	nounDoc["service"] = "run the daemon under a supervisor (systemd)"
}

// down asks the daemon to shut down and waits until its process has exited
// and its socket is gone, within --timeout.
func down(x *cliCtx) (any, error) {
	start := time.Now()
	var st ctl.Status
	if err := x.call(http.MethodGet, ctl.PathStatus, nil, &st); err != nil {
		return nil, err
	}
	var res ctl.ShutdownResult
	if err := x.call(http.MethodPost, ctl.PathShutdown, nil, &res); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(x.ctx, x.timeout)
	defer cancel()
	for {
		_, sockErr := os.Stat(st.Socket)
		gone := errors.Is(sockErr, os.ErrNotExist) && !processAlive(st.PID)
		if gone {
			return DownResult{PID: st.PID, StateDir: st.StateDir, Stopped: true, Seconds: time.Since(start).Seconds()}, nil
		}
		select {
		case <-ctx.Done():
			return nil, &ctl.Error{Code: ctl.CodeTimeout, Message: fmt.Sprintf("daemon %d still running after %v", st.PID, x.timeout.Round(time.Millisecond)),
				Hint: fmt.Sprintf("raise --timeout, or kill it: kill %d", st.PID)}
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// processAlive reports whether pid names a live process that is not a
// zombie (a detached daemon's parent may not reap it at once).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil {
		return errors.Is(err, syscall.EPERM)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true // no /proc: trust kill(0)
	}
	// The state follows the command name in parentheses: "pid (comm) S ...".
	if i := strings.LastIndexByte(string(b), ')'); i >= 0 && i+2 < len(b) {
		return b[i+2] != 'Z' && b[i+2] != 'X'
	}
	return true
}

// serviceUnit is a systemd user unit for the daemon of state.
func serviceUnit(name, exe, state string) ServiceUnit {
	// systemd quoting: double quotes, backslash escapes, and %% for a
	// literal % (specifiers).
	q := func(s string) string {
		s = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%").Replace(s)
		return `"` + s + `"`
	}
	desc := strings.ReplaceAll(state, "%", "%%")
	unit := fmt.Sprintf(`# agentnet node for the state directory %[2]s
# Install:  agentnet service print-unit > ~/.config/systemd/user/%[3]s.service
#           systemctl --user daemon-reload && systemctl --user enable --now %[3]s
# Keep it running while logged out:  loginctl enable-linger "$USER"
[Unit]
Description=agentnet node (%[2]s)
Documentation=https://github.com/agentnet/agentnet#lifecycle
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
Environment=%[4]s
ExecStart=%[5]s up
ExecStop=%[5]s down --timeout 20s
TimeoutStopSec=30
Restart=on-failure
RestartSec=5
# up exits 2 on bad flags or config: restarting cannot help.
RestartPreventExitStatus=2
NoNewPrivileges=true
PrivateTmp=true

[Install]
WantedBy=default.target
`, name, desc, name, q("AGENTNET_STATE="+state), q(exe))
	return ServiceUnit{Unit: unit, Path: filepath.Join("~/.config/systemd/user", name+".service"), Name: name + ".service"}
}
