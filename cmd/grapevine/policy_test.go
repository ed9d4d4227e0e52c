package main

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/grapevine-net/grapevine/netpol/admit"
	"github.com/grapevine-net/grapevine/status"
)

func TestPolicyLine(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		st   status.NetworkPolicy
		want string
	}{
		{status.NetworkPolicy{}, "network policy off"},
		{status.NetworkPolicy{Enabled: true, Unreachable: "dial unix /run/grapevine/policy.sock: connection refused"},
			"network policy on: GRAPEVINE-POLICY NOT ANSWERING, new pods cannot start: dial unix /run/grapevine/policy.sock: connection refused"},
		{status.NetworkPolicy{Enabled: true}, "network policy on: WAITING for the first lists of pods, namespaces and policies"},
		{status.NetworkPolicy{Enabled: true, Synced: true, Policies: 3, Pods: 5, LastSync: now.Add(-4 * time.Second)},
			"network policy on: 3 policies, 5 pods enforced, last sync 4s ago"},
		{status.NetworkPolicy{Enabled: true, Synced: true, Policies: 1, LastSync: now, Error: "nftables refused"},
			"network policy on: 1 policies, 0 pods enforced, last sync 0s ago\nNETWORK POLICY NOT APPLIED: nftables refused"},
	}
	for _, tt := range tests {
		if got := policyLine(tt.st, now); got != tt.want {
			t.Errorf("policyLine(%+v) = %q, want %q", tt.st, got, tt.want)
		}
	}
}

// TestPolicyStatus: the agent reports network policy as grapevine-policy
// answers on --policy-socket, off without the flag, and not answering
// when nothing serves the socket.
func TestPolicyStatus(t *testing.T) {
	ctx := context.Background()
	if got := policyStatus(ctx, ""); got != (status.NetworkPolicy{}) {
		t.Errorf("policyStatus without --policy-socket = %+v, want off", got)
	}

	missing := filepath.Join(t.TempDir(), "policy.sock")
	got := policyStatus(ctx, missing)
	if !got.Enabled || got.Socket != missing || !strings.Contains(got.Unreachable, "grapevine-policy") {
		t.Errorf("policyStatus of a socket nothing serves = %+v, want enabled, unreachable, naming grapevine-policy", got)
	}

	socket := filepath.Join(t.TempDir(), "policy.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	serveCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	answer := status.NetworkPolicy{Enabled: true, Synced: true, Policies: 2, Pods: 1}
	go func() {
		done <- admit.Server{
			Admit:  func(context.Context, admit.Request) error { return errors.New("not a test of admissions") },
			Status: func() status.NetworkPolicy { return answer },
		}.Serve(serveCtx, ln)
	}()
	defer func() { stop(); <-done }()
	got = policyStatus(ctx, socket)
	want := answer
	want.Socket = socket
	if got != want {
		t.Errorf("policyStatus = %+v, want %+v", got, want)
	}
}
