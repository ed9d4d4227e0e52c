package bench

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/grapevine-net/grapevine/e2e/lab"
)

// NamePrefix starts the name of every namespace this package creates itself.
const NamePrefix = "gvb"

// scope names what one run creates and removes it again.
type scope struct {
	id string

	mu         sync.Mutex
	namespaces []string
}

func newScope() *scope { return &scope{id: lab.NewID()} }

// name is "gvb" + the run id + "-" + role.
func (s *scope) name(role string) string { return NamePrefix + s.id + "-" + role }

// addNamespace creates the named network namespace gvb<id>-<role>.
func (s *scope) addNamespace(ctx context.Context, role string) (string, error) {
	name := s.name(role)
	if _, err := lab.Run(ctx, "ip", "netns", "add", name); err != nil {
		return "", err
	}
	s.mu.Lock()
	s.namespaces = append(s.namespaces, name)
	s.mu.Unlock()
	return name, nil
}

// deleteNamespace removes a namespace addNamespace created.
func (s *scope) deleteNamespace(ctx context.Context, name string) error {
	s.mu.Lock()
	i := slices.Index(s.namespaces, name)
	if i < 0 {
		s.mu.Unlock()
		return fmt.Errorf("namespace %s was not created here", name)
	}
	s.namespaces = slices.Delete(s.namespaces, i, i+1)
	s.mu.Unlock()
	_, err := lab.Run(ctx, "ip", "netns", "delete", name)
	return err
}

// close removes every namespace still recorded, newest first.
func (s *scope) close(ctx context.Context) error {
	s.mu.Lock()
	names := slices.Clone(s.namespaces)
	s.namespaces = nil
	s.mu.Unlock()
	var errs []error
	for _, name := range slices.Backward(names) {
		if _, err := lab.Run(ctx, "ip", "netns", "delete", name); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
