package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/agentnet/agentnet/ctl"
	"github.com/agentnet/agentnet/daemon"
)

func init() {
	registerCLI(&cliCommand{
		noun: "up", summary: "run this node as a daemon with the local control API (foreground; --detach for background)",
		output: ctl.Status{}, daemonless: true,
		errors:  []ctl.Code{ctl.CodeConflict, ctl.CodeInvalidArgument, ctl.CodeDamagedState},
		example: "agentnet up --hostname alice",
		setup:   setupUp,
		human: func(w io.Writer, v any) {
			st := v.(ctl.Status)
			fmt.Fprintf(w, "agentnet up: %s", st.Addr)
			if st.Hostname != "" {
				fmt.Fprintf(w, " (%s)", st.Hostname)
			}
			fmt.Fprintf(w, "\nrendezvous %s (%s)\ncontrol socket %s\nstate %s\n", st.Rendezvous.Addr, st.Rendezvous.Mode, st.Socket, st.StateDir)
		},
	})
}

func setupUp(fs *flag.FlagSet) func(x *cliCtx) (any, error) {
	settings := map[string]*string{}
	for _, s := range daemon.Settings {
		if s.Name == "socket" { // a common flag already
			continue
		}
		settings[s.Name] = fs.String(s.Name, "", fmt.Sprintf("%s (env %s; default %s)", s.Usage, s.Env, dash(s.Default)))
	}
	detach := fs.Bool("detach", false, "start the daemon in the background (log in <state>/daemon.log) and return once it serves")
	logLevel := fs.String("log-level", "", "debug, info, warn or error (env AGENTNET_LOG_LEVEL; default info)")
	logFormat := fs.String("log-format", "", "text or json (env AGENTNET_LOG_FORMAT; default text)")
	return func(x *cliCtx) (any, error) {
		state := fs.Lookup("state").Value.String()
		if state == "" {
			state = daemon.DefaultStateDir()
		}
		state, _ = filepath.Abs(state)
		cfg := daemon.Config{StateDir: state, Version: version}
		if err := cfg.LoadFile(); err != nil {
			if errors.Is(err, daemon.ErrDamaged) {
				return nil, upError(err)
			}
			return nil, badUsage("%v", err)
		}
		if err := cfg.LoadEnv(os.Getenv); err != nil {
			return nil, badUsage("%v", err)
		}
		var setErr error
		fs.Visit(func(f *flag.Flag) {
			if _, ok := settings[f.Name]; ok || f.Name == "socket" {
				if err := cfg.Set(f.Name, f.Value.String()); err != nil && setErr == nil {
					setErr = err
				}
			}
		})
		if setErr != nil {
			return nil, badUsage("%v", setErr)
		}
		if err := checkRendezvousAddr(cfg); err != nil {
			notifyParent(ctl.ErrorBody{Error: err.(*ctl.Error)})
			return nil, err
		}
		if *detach {
			sock := cfg.Socket
			if sock == "" {
				sock = filepath.Join(state, daemon.SocketName)
			}
			return nil, upDetached(x, state, sock)
		}
		level := *logLevel
		if level == "" {
			level = os.Getenv("AGENTNET_LOG_LEVEL")
		}
		var lv slog.Level
		if level != "" {
			if err := lv.UnmarshalText([]byte(level)); err != nil {
				return nil, badUsage("log level %q: want debug, info, warn or error", level)
			}
		}
		format := *logFormat
		if format == "" {
			format = os.Getenv("AGENTNET_LOG_FORMAT")
		}
		logger, err := newLogger(x.stderr, format, lv)
		if err != nil {
			return nil, badUsage("%v", err)
		}
		cfg.Logger = logger
		d, err := daemon.New(cfg)
		if err != nil {
			return nil, badUsage("%v", err)
		}
		// fail reports a startup failure to a detaching parent too.
		fail := func(err error) error {
			e := toCtlError(err)
			notifyParent(ctl.ErrorBody{Error: e})
			return e
		}
		ctx, cancel := context.WithCancel(x.ctx)
		defer cancel()
		done := make(chan error, 1)
		go func() { done <- d.Run(ctx) }()
		select {
		case <-d.Ready():
		case err := <-done:
			return nil, fail(upError(err))
		}
		var warn io.Writer = x.stderr
		if format == "json" {
			warn = warnLog{logger}
		}
		if err := startupCheck(ctx, d, warn); err != nil {
			cancel()
			<-done
			return nil, fail(err)
		}
		st := d.Status()
		if os.Getenv(notifyEnv) == "" {
			// Detached, stdout is daemon.log: the parent prints the
			// status, and the log has it ("daemon ready").
			x.emit(st)
		}
		notifyParent(st)
		sdNotify("READY=1")
		err = <-done
		sdNotify("STOPPING=1")
		if err != nil {
			return nil, upError(err)
		}
		return nil, nil
	}
}

// upDetached starts "agentnet up" again without --detach in a new session,
// its output appended to <state>/daemon.log, and returns once the child
// reports that it serves (after its startup check), or with the child's
// error. A daemon already answering on the socket is a conflict.
func upDetached(x *cliCtx, state, sock string) error {
	c := ctl.NewClient(sock)
	ctx, cancel := context.WithTimeout(x.ctx, 2*time.Second)
	var other ctl.Status
	err := c.Do(ctx, http.MethodGet, ctl.PathStatus, nil, &other)
	cancel()
	if err == nil {
		return &ctl.Error{Code: ctl.CodeConflict,
			Message: fmt.Sprintf("a daemon (pid %d) already runs for %s on %s", other.PID, other.StateDir, sock),
			Hint:    "use it (agentnet status), or stop it first (agentnet down)"}
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	args := []string{"up"}
	for _, a := range os.Args[2:] {
		if a != "--detach" && a != "-detach" && a != "--detach=true" && a != "--json" && a != "-json" {
			args = append(args, a)
		}
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(state, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	defer pr.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{pw} // fd 3
	cmd.Env = append(os.Environ(), "AGENTNET_STATE="+state, notifyEnv+"=3")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	line := make(chan []byte, 1)
	go func() {
		b, _ := bufio.NewReaderSize(pr, 64<<10).ReadBytes('\n')
		line <- b
	}()
	var b []byte
	select {
	case b = <-line:
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		cmd.Wait()
		return &ctl.Error{Code: ctl.CodeTimeout, Message: "the daemon did not report ready within 60 s", Hint: "see " + logPath}
	}
	var eb ctl.ErrorBody
	if json.Unmarshal(b, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		cmd.Wait()
		eb.Error.Hint = strings.TrimSpace(eb.Error.Hint + " (log: " + logPath + ")")
		return eb.Error
	}
	var st ctl.Status
	if len(b) == 0 || json.Unmarshal(b, &st) != nil || st.PID == 0 {
		err := cmd.Wait()
		tail, _ := os.ReadFile(logPath)
		lines := strings.Split(strings.TrimSpace(string(tail)), "\n")
		if len(lines) > 5 {
			lines = lines[len(lines)-5:]
		}
		return &ctl.Error{Code: ctl.CodeInternal, Message: fmt.Sprintf("the daemon exited (%v): %s", err, strings.Join(lines, " | ")), Hint: "see " + logPath}
	}
	cmd.Process.Release()
	if !st.Rendezvous.Registered && st.Rendezvous.Addr != "" {
		// What the daemon warned about in its log, where the user sees it.
		why := st.Rendezvous.Error
		if why == "" {
			why = "no answer yet"
		}
		fmt.Fprintf(x.stderr, "agentnet up: warning: not registered at the rendezvous %s: %s; retrying in the background (\"agentnet status\" shows it)\n", st.Rendezvous.Addr, why)
	}
	x.emit(st)
	return nil
}
