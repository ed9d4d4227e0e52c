// Package admit is the exchange by which the CNI plugin, during ADD, tells
// the policy enforcer (grapevine-policy, package netpol/enforce) a new pod's
// identity and addresses and waits until the enforcer has put the pod's
// network policies in force: no packet of the pod passes before that
// (package netpol denies addresses of the node's block that no known pod
// holds), and ADD returns only after it.
//
// The enforcer listens on a Unix socket; the agent, told of it with
// --policy-socket, writes its path into node.json
// (nodestate.State.PolicySocket), and the plugin learns of the socket only
// from there. One connection carries one request and one answer, each a
// JSON object on one line. The same socket answers a status request
// (AskStatus): the agent's status and `grapevine doctor` ask it whether
// policy is in force. The package depends on neither Kubernetes nor
// netlink, so the plugin and the agent stay small.
package admit

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"sync"
	"time"

	"github.com/grapevine-net/grapevine/status"
)

// MaxMessage bounds a request and an answer, in bytes: a pod's name,
// namespace, container ID and two addresses take a few hundred.
const MaxMessage = 4096

// Timeout is how long the plugin waits for the agent's answer; the agent
// gives up on a request after it too.
const Timeout = 10 * time.Second

// readTimeout bounds how long the agent waits for a connection's request.
const readTimeout = 2 * time.Second

// Request is one pod the plugin has wired: its Kubernetes namespace and
// name (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME) and its addresses; or,
// with Status, a question about the enforcer's state that names no pod.
type Request struct {
	// Status asks for the enforcer's state (Answer.Status) instead of
	// admitting a pod; such a request carries nothing else.
	Status      bool         `json:"status,omitempty"`
	Namespace   string       `json:"namespace"`
	Name        string       `json:"name"`
	ContainerID string       `json:"containerID"`
	IPs         []netip.Addr `json:"ips"`
	// AnswerWithinMs is how long the plugin waits for the answer, less a
	// margin: the agent answers with its reason before the plugin gives
	// up. 0 (or more than Timeout) means Timeout less a second.
	AnswerWithinMs int64 `json:"answerWithinMs,omitempty"`
}

// Answer is the enforcer's reply: Error is empty once the pod's policies
// are in force. A status request's answer carries Status.
type Answer struct {
	Error  string                `json:"error,omitempty"`
	Status *status.NetworkPolicy `json:"status,omitempty"`
}

// The API server's rules for namespace names (DNS-1123 labels) and pod
// names (DNS-1123 subdomains); written out here so that the plugin does
// not link Kubernetes' libraries.
var (
	dnsLabel     = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
)

// Validate reports, in one sentence, what makes r unusable.
func (r Request) Validate() error {
	if r.Status {
		if r.Namespace != "" || r.Name != "" || r.ContainerID != "" || len(r.IPs) > 0 || r.AnswerWithinMs != 0 {
			return errors.New("a status request must name no pod")
		}
		return nil
	}
	if len(r.Namespace) > 63 || !dnsLabel.MatchString(r.Namespace) {
		return fmt.Errorf("pod namespace %q is not a valid namespace name (a DNS-1123 label)", r.Namespace)
	}
	if len(r.Name) > 253 || !dnsSubdomain.MatchString(r.Name) {
		return fmt.Errorf("pod name %q is not a valid pod name (a DNS-1123 subdomain)", r.Name)
	}
	if r.AnswerWithinMs < 0 {
		return fmt.Errorf("pod %s/%s: answerWithinMs %d is negative", r.Namespace, r.Name, r.AnswerWithinMs)
	}
	if len(r.IPs) == 0 || len(r.IPs) > 2 {
		return fmt.Errorf("pod %s/%s: %d addresses, want one or two (one per family)", r.Namespace, r.Name, len(r.IPs))
	}
	for _, ip := range r.IPs {
		if !ip.IsValid() || ip.Zone() != "" || ip.Is4In6() {
			return fmt.Errorf("pod %s/%s: address %q is not a plain IPv4 or IPv6 address", r.Namespace, r.Name, ip)
		}
	}
	// Both families are enforced: a second address of the same family
	// would be one the agent isolates but the plugin never wired.
	if len(r.IPs) == 2 && r.IPs[0].Is4() == r.IPs[1].Is4() {
		return fmt.Errorf("pod %s/%s: addresses %s and %s are of one family, want one per family", r.Namespace, r.Name, r.IPs[0], r.IPs[1])
	}
	return nil
}

// ErrUnreachable means the enforcer did not answer: its socket is missing
// or refuses connections, or no answer came in time.
var ErrUnreachable = errors.New("the network policy enforcer (grapevine-policy) did not answer")

// Ask sends r to the enforcer at socket and waits, until ctx ends, for its
// answer. An error wraps ErrUnreachable when the enforcer did not answer,
// and is the enforcer's own sentence when it refused.
func Ask(ctx context.Context, socket string, r Request) error {
	_, err := exchange(ctx, socket, r)
	return err
}

// AskStatus asks the enforcer at socket for its state, until ctx ends. An
// error wraps ErrUnreachable when the enforcer did not answer.
func AskStatus(ctx context.Context, socket string) (status.NetworkPolicy, error) {
	a, err := exchange(ctx, socket, Request{Status: true})
	if err != nil {
		return status.NetworkPolicy{}, err
	}
	if a.Status == nil {
		return status.NetworkPolicy{}, fmt.Errorf("%w at %s: an answer without a status", ErrUnreachable, socket)
	}
	return *a.Status, nil
}

// exchange sends r and reads the answer; a refusal is an error with the
// enforcer's sentence.
func exchange(ctx context.Context, socket string, r Request) (Answer, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Answer{}, fmt.Errorf("%w at %s: %w", ErrUnreachable, socket, err)
	}
	defer conn.Close()
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
		if !r.Status {
			// A tenth of the time, at least 50 ms, for the answer to travel.
			left := time.Until(deadline)
			r.AnswerWithinMs = max((left - max(left/10, 50*time.Millisecond)).Milliseconds(), 1)
		}
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(r); err != nil {
		return Answer{}, fmt.Errorf("%w at %s: send: %w", ErrUnreachable, socket, err)
	}
	var a Answer
	if err := json.NewDecoder(io.LimitReader(conn, MaxMessage)).Decode(&a); err != nil {
		return Answer{}, fmt.Errorf("%w at %s: %w", ErrUnreachable, socket, err)
	}
	if a.Error != "" {
		return a, errors.New(a.Error)
	}
	return a, nil
}

// Handler puts r's pod's policies in force, returning once they are or
// when ctx ends.
type Handler func(ctx context.Context, r Request) error

// Server answers the requests of one socket: Admit the admissions, Status
// the status requests (nil: answered with an error), and Rejected is
// called for each request that is not one (too long, not JSON, invalid),
// which gets an answer saying so.
type Server struct {
	Admit    Handler
	Status   func() status.NetworkPolicy
	Rejected func(error)
}

// Serve answers admissions with h on ln until ctx ends (Server.Serve
// without status requests).
func Serve(ctx context.Context, ln net.Listener, h Handler, rejected func(error)) error {
	return Server{Admit: h, Rejected: rejected}.Serve(ctx, ln)
}

// Serve answers requests on ln until ctx ends, each connection on its own
// goroutine, and returns once they are all answered.
func (s Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var serving sync.WaitGroup
	defer serving.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("policy admission socket: %w", err)
		}
		serving.Go(func() { s.serveConn(ctx, conn) })
	}
}

func (s Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(readTimeout))
	line, err := bufio.NewReaderSize(io.LimitReader(conn, MaxMessage), MaxMessage).ReadSlice('\n')
	var r Request
	if err == nil {
		err = json.Unmarshal(line, &r)
	}
	if err == nil {
		err = r.Validate()
	} else {
		err = fmt.Errorf("not a request of at most %d bytes on one line: %w", MaxMessage, err)
	}
	if err != nil {
		if s.Rejected != nil {
			s.Rejected(err)
		}
		answer(conn, Answer{Error: "grapevine-policy refused the request: " + err.Error()})
		return
	}
	if r.Status {
		if s.Status == nil {
			answer(conn, Answer{Error: "this socket reports no status"})
			return
		}
		st := s.Status()
		answer(conn, Answer{Status: &st})
		return
	}
	ctx, cancel := context.WithTimeout(ctx, answerWithin(r))
	defer cancel()
	if err := s.Admit(ctx, r); err != nil {
		answer(conn, Answer{Error: err.Error()})
		return
	}
	answer(conn, Answer{})
}

// answerWithin is how long the handler may take for r.
func answerWithin(r Request) time.Duration {
	wait := time.Duration(r.AnswerWithinMs) * time.Millisecond
	if wait <= 0 || wait > Timeout {
		return Timeout - time.Second
	}
	return wait
}

func answer(conn net.Conn, a Answer) {
	conn.SetWriteDeadline(time.Now().Add(readTimeout))
	json.NewEncoder(conn).Encode(a) // a client gone by now has nothing to learn
}
