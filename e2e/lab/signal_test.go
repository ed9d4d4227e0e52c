package lab

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestSignalIf: a process that does not belong is left alone, one that
// does gets the signal, and a pid already gone is no error.
func TestSignalIf(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	pid := cmd.Process.Pid

	if err := SignalIf(pid, syscall.SIGKILL, func(int) bool { return false }); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		t.Fatalf("a process that does not belong was signalled: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	if !InNetNS(pid, "/proc/self/ns/net") {
		t.Error("the child is not in this process's network namespace")
	}

	if err := SignalIf(pid, syscall.SIGKILL, func(p int) bool { return InNetNS(p, "/proc/self/ns/net") }); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || err.(*exec.ExitError).Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child ended with %v, want killed", err)
	}
	// Reaped: its pid names no process of ours any more.
	if err := SignalIf(pid, syscall.SIGKILL, func(int) bool { return false }); err != nil {
		t.Errorf("a gone pid: %v", err)
	}
	if InCgroup(os.Getpid(), "/no-such-cgroup-of-grapevine") {
		t.Error("this process is in a cgroup that does not exist")
	}
}
