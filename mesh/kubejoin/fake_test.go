package kubejoin

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
)

// fakeAPI is an in-memory API server for Node objects: a resource version
// counter, the history of changes for watches, and failures a test turns
// on as it goes.
type fakeAPI struct {
	mu      sync.Mutex
	nodes   []Node
	rv      int
	history []Event // every change, ResourceVersion ascending
	// oldest is the first version a watch may start from; older ones get
	// 410 Gone (the API server compacted its history).
	oldest int
	// changed is closed and replaced on every change and on endWatches.
	changed chan struct{}
	ended   int // bumped by endWatches

	failList  func() error // nil: succeed
	failWatch func() error // nil: succeed
	lists     int
	watches   []string // resource versions watched from
}

func newFake(nodes ...Node) *fakeAPI {
	f := &fakeAPI{changed: make(chan struct{}), rv: 1}
	for _, n := range nodes {
		f.nodes = append(f.nodes, withUID(n))
	}
	return f
}

// withUID gives n a UID derived from its name unless it has one.
func withUID(n Node) Node {
	if n.UID == "" {
		n.UID = "uid-" + n.Name
	}
	return n
}

func (f *fakeAPI) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// set replaces the Node objects, recording ADDED, MODIFIED and DELETED
// events for watchers.
func (f *fakeAPI) set(nodes ...Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	next := make([]Node, 0, len(nodes))
	for _, n := range nodes {
		next = append(next, withUID(n))
	}
	event := func(typ EventType, n Node) {
		f.rv++
		f.history = append(f.history, Event{Type: typ, Node: n, ResourceVersion: strconv.Itoa(f.rv)})
	}
	for _, old := range f.nodes {
		i := slices.IndexFunc(next, func(n Node) bool { return n.Name == old.Name })
		if i < 0 || next[i].UID != old.UID {
			event(Deleted, old)
		}
	}
	for _, n := range next {
		i := slices.IndexFunc(f.nodes, func(o Node) bool { return o.Name == n.Name })
		switch {
		case i < 0 || f.nodes[i].UID != n.UID:
			event(Added, n)
		case !slices.Equal(f.nodes[i].Addresses, n.Addresses):
			event(Modified, n)
		}
	}
	f.nodes = next
	f.broadcastLocked()
}

// replaceUnseen replaces the Node objects and forgets the history, as when
// a watch fell behind an etcd compaction: running watches and watches from
// before now get 410 Gone, so the changes show only in a new list.
func (f *fakeAPI) replaceUnseen(nodes ...Node) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = f.nodes[:0]
	for _, n := range nodes {
		f.nodes = append(f.nodes, withUID(n))
	}
	f.rv++
	f.oldest = f.rv
	f.history = nil
	f.broadcastLocked()
}

// endWatches ends the running watches normally, as the API server's
// timeoutSeconds does.
func (f *fakeAPI) endWatches() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ended++
	f.broadcastLocked()
}

func (f *fakeAPI) listCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.lists
}

func (f *fakeAPI) watchedFrom() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.watches)
}

func (f *fakeAPI) setFailWatch(fail func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failWatch = fail
}

func (f *fakeAPI) ListNodes(context.Context) (NodeList, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.failList != nil {
		if err := f.failList(); err != nil {
			return NodeList{}, err
		}
	}
	return NodeList{Nodes: slices.Clone(f.nodes), ResourceVersion: strconv.Itoa(f.rv)}, nil
}

func (f *fakeAPI) GetNode(_ context.Context, name string) (Node, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return Node{}, ErrNotFound
}

func (f *fakeAPI) WatchNodes(ctx context.Context, resourceVersion string, handle func(Event)) error {
	from, err := strconv.Atoi(resourceVersion)
	if err != nil {
		return errors.New("fake: bad resource version " + resourceVersion)
	}
	f.mu.Lock()
	f.watches = append(f.watches, resourceVersion)
	if f.failWatch != nil {
		if err := f.failWatch(); err != nil {
			f.mu.Unlock()
			return err
		}
	}
	ended := f.ended
	f.mu.Unlock()
	for {
		f.mu.Lock()
		if from < f.oldest {
			f.mu.Unlock()
			return ErrExpired
		}
		var batch []Event
		for _, ev := range f.history {
			if v, _ := strconv.Atoi(ev.ResourceVersion); v > from {
				batch = append(batch, ev)
			}
		}
		changed, over := f.changed, f.ended != ended
		f.mu.Unlock()
		for _, ev := range batch {
			handle(ev)
			from, _ = strconv.Atoi(ev.ResourceVersion)
		}
		if over {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}
