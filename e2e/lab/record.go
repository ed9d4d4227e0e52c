package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// RegistryDir records every lab on this machine, one <id>.json each, so that
// `lab down` finds the demo lab and a test run can remove the labs of an
// earlier run that was killed before its cleanup ran (a test timeout panics
// without running deferred functions).
const RegistryDir = "/run/grapevine-lab"

// Record is what the registry knows about a lab.
type Record struct {
	ID  string `json:"id"`
	Dir string `json:"dir"`
	// Owner is the process that built the lab and its start time (clock
	// ticks since boot), which tells a live owner from a reused pid.
	// Detached labs (the demo) have no owner: they live until `lab down`.
	OwnerPID   int    `json:"ownerPID,omitempty"`
	OwnerStart uint64 `json:"ownerStart,omitempty"`
	// RemoveDir says the directory belongs to the lab and goes with it.
	RemoveDir bool `json:"removeDir"`
}

func recordPath(id string) string { return filepath.Join(RegistryDir, id+".json") }

func (l *Lab) record() Record {
	r := Record{ID: l.ID, Dir: l.Dir, RemoveDir: l.ownsDir || l.detach}
	if !l.detach {
		r.OwnerPID = os.Getpid()
		r.OwnerStart, _ = processStart(r.OwnerPID) // our own stat is always readable
	}
	return r
}

// claimRecord publishes the lab's record, or fails with an error matching
// fs.ErrExist if another lab holds the id. The record appears complete or
// not at all: it is written aside and hard-linked into place.
func (l *Lab) claimRecord() error {
	data, err := json.Marshal(l.record())
	if err != nil {
		return err
	}
	var tmp *os.File
	// `lab down` removes an empty registry directory: make it again if
	// that happened between the two calls.
	for attempt := 0; ; attempt++ {
		if err := os.MkdirAll(RegistryDir, 0o755); err != nil {
			return fmt.Errorf("lab registry: %w", err)
		}
		tmp, err = os.CreateTemp(RegistryDir, ".claim-")
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) || attempt == 2 {
			return fmt.Errorf("lab registry: %w", err)
		}
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("lab registry: %w", err)
	}
	if err := os.Link(tmp.Name(), recordPath(l.ID)); err != nil {
		return fmt.Errorf("lab registry: %w", err)
	}
	return nil
}

// Records lists the labs in the registry.
func Records() ([]Record, error) {
	entries, err := os.ReadDir(RegistryDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lab registry: %w", err)
	}
	var recs []Record
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(RegistryDir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("lab registry: %w", err)
		}
		var r Record
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("lab registry %s: %w", e.Name(), err)
		}
		recs = append(recs, r)
	}
	return recs, nil
}

// Orphaned reports whether the record's owner process is gone. Detached labs
// are never orphaned.
func (r Record) Orphaned() bool {
	if r.OwnerPID == 0 {
		return false
	}
	start, err := processStart(r.OwnerPID)
	return err != nil || start != r.OwnerStart
}

// Remove takes down the recorded lab: its namespaces and processes, its
// directory if the lab owns it, and the record itself.
func (r Record) Remove(ctx context.Context) error {
	errs := []error{Down(ctx, r.ID)}
	if r.RemoveDir && r.Dir != "" {
		errs = append(errs, os.RemoveAll(r.Dir))
	}
	if err := os.Remove(recordPath(r.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// RemoveRegistryIfEmpty removes RegistryDir when no lab is recorded in it, so
// the machine is left as it was before the first lab.
func RemoveRegistryIfEmpty() error { return removeIfEmpty(RegistryDir) }

func removeIfEmpty(dir string) error {
	err := os.Remove(dir)
	if err == nil || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST) {
		return nil
	}
	return fmt.Errorf("lab registry: %w", err)
}

// RemoveOrphans removes every lab whose owner process died without
// cleaning up, and returns their ids.
func RemoveOrphans(ctx context.Context) ([]string, error) {
	recs, err := Records()
	if err != nil {
		return nil, err
	}
	var ids []string
	var errs []error
	for _, r := range recs {
		if !r.Orphaned() {
			continue
		}
		ids = append(ids, r.ID)
		errs = append(errs, r.Remove(ctx))
	}
	return ids, errors.Join(errs...)
}

// processStart returns a process's start time in clock ticks since boot.
func processStart(pid int) (uint64, error) {
	st, err := ReadProcStat(pid)
	return st.StartTime, err
}
