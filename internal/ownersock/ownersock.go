// Package ownersock opens the Unix sockets that Grapevine's daemons serve
// on the host (the agent's status socket, grapevine-policy's admission
// socket): a socket a previous run left is replaced, and only root may
// connect. It touches nothing but the socket's path.
package ownersock

import (
	"errors"
	"fmt"
	"net"
	"os"
)

// Listen listens on the Unix socket path, replacing a stale one a previous
// run left, readable and writable by root alone; what names the socket in
// errors.
func Listen(path, what string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: remove the stale one: %w", what, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return ln, nil
}
