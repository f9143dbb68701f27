package main

import (
	"context"
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
		cfg.Logger = slog.New(slog.NewTextHandler(x.stderr, &slog.HandlerOptions{Level: lv}))
		d, err := daemon.New(cfg)
		if err != nil {
			return nil, badUsage("%v", err)
		}
		done := make(chan error, 1)
		go func() { done <- d.Run(x.ctx) }()
		select {
		case <-d.Ready():
		case err := <-done:
			return nil, upError(err)
		}
		x.emit(d.Status())
		if err := <-done; err != nil {
			return nil, upError(err)
		}
		return nil, nil
	}
}

func upError(err error) error {
	var h interface{ Hint() string }
	if errors.Is(err, daemon.ErrDamaged) && errors.As(err, &h) {
		return &ctl.Error{Code: ctl.CodeDamagedState, Message: err.Error(), Hint: h.Hint()}
	}
	if errors.Is(err, daemon.ErrInUse) {
		return &ctl.Error{Code: ctl.CodeConflict, Message: err.Error(), Hint: "a daemon already runs on this state directory: use it (agentnet status), stop it, or give this one --state"}
	}
	return &ctl.Error{Code: ctl.CodeInternal, Message: err.Error()}
}

// upDetached starts "agentnet up" again without --detach in a new session,
// its output appended to <state>/daemon.log, and returns once its control
// socket answers.
func upDetached(x *cliCtx, state, sock string) error {
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
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "AGENTNET_STATE="+state)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	c := ctl.NewClient(sock)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			tail, _ := os.ReadFile(logPath)
			lines := strings.Split(strings.TrimSpace(string(tail)), "\n")
			if len(lines) > 5 {
				lines = lines[len(lines)-5:]
			}
			return &ctl.Error{Code: ctl.CodeInternal, Message: fmt.Sprintf("the daemon exited (%v): %s", err, strings.Join(lines, " | ")), Hint: "see " + logPath}
		case <-time.After(100 * time.Millisecond):
		}
		ctx, cancel := context.WithTimeout(x.ctx, time.Second)
		var st ctl.Status
		err := c.Do(ctx, http.MethodGet, ctl.PathStatus, nil, &st)
		cancel()
		if err == nil && st.StateDir == state {
			cmd.Process.Release()
			x.emit(st)
			return nil
		}
	}
	cmd.Process.Kill()
	return &ctl.Error{Code: ctl.CodeTimeout, Message: "the daemon did not answer within 30 s", Hint: "see " + logPath}
}
