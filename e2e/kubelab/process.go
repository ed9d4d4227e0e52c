package kubelab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/grapevine-net/grapevine/e2e/lab"
	"github.com/grapevine-net/grapevine/internal/poll"
)

// process is one long-running program of the cluster (etcd, an API server,
// a kubelet, ...) with its output in a log file.
type process struct {
	name   string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

// start starts cmd with its output appended to logPath. The process dies
// with the test process (Pdeathsig), so a crashed test leaves none behind.
func start(name string, cmd *exec.Cmd, logPath string) (*process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, log: logPath, cmd: cmd, exited: make(chan struct{})}
	go func() {
		cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

// Running reports whether the process has not exited.
func (p *process) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// Stop sends SIGTERM, then SIGKILL after grace, and waits for the exit.
func (p *process) Stop(grace time.Duration) {
	if !p.Running() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		p.cmd.Process.Kill()
		<-p.exited
	}
}

// LogTail returns the last n lines of the process's log.
func (p *process) LogTail(n int) string {
	tail, err := lab.TailFile(p.log, n)
	if err != nil {
		return err.Error()
	}
	return tail
}

// waitFor polls check every interval until it returns nil, the process
// exits, or ctx ends; the error names what was awaited and the last failure.
func waitFor(ctx context.Context, what string, p *process, interval time.Duration, check func(context.Context) error) error {
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if p != nil {
		go func() {
			select {
			case <-p.exited:
				stop(fmt.Errorf("%s exited\n%s", p.name, p.LogTail(30)))
			case <-ctx.Done():
			}
		}()
	}
	return poll.Until(ctx, what, interval, func() error { return check(ctx) })
}
