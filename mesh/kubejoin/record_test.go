package kubejoin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// recordServer is an API server holding at most one ConfigMap, the
// ledger's record, with the API server's create semantics: 201 Created,
// then 409 Conflict.
type recordServer struct {
	mu      sync.Mutex
	obj     []byte // the stored ConfigMap; nil: none
	creates int
	bad     string // non-empty: every request fails with this status text
}

func (s *recordServer) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	const collection = "/api/v1/namespaces/kube-system/configmaps"
	switch {
	case s.bad != "":
		w.WriteHeader(http.StatusForbidden)
		fmt.Fprintf(w, `{"kind":"Status","code":403,"message":%q}`, s.bad)
	case r.Method == http.MethodPost && r.URL.Path == collection:
		s.creates++
		body, _ := io.ReadAll(r.Body)
		var obj configMapObject
		if r.Header.Get("Content-Type") != "application/json" || json.Unmarshal(body, &obj) != nil || obj.Metadata.Name == "" {
			http.Error(w, "bad create", http.StatusBadRequest)
			return
		}
		if s.obj != nil {
			w.WriteHeader(http.StatusConflict)
			fmt.Fprintf(w, `{"kind":"Status","code":409,"reason":"AlreadyExists","message":"configmaps %q already exists"}`, obj.Metadata.Name)
			return
		}
		s.obj = body
		w.WriteHeader(http.StatusCreated)
		w.Write(body)
	case r.Method == http.MethodGet && r.URL.Path == collection+"/"+LedgerRecordName:
		if s.obj == nil {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprint(w, `{"kind":"Status","code":404,"reason":"NotFound","message":"configmaps \"grapevine-ledger\" not found"}`)
			return
		}
		w.Write(s.obj)
	default:
		http.Error(w, "unexpected "+r.Method+" "+r.URL.Path, http.StatusNotFound)
	}
}

// TestRecordLedgerOverHTTP: the first agent's create makes the record;
// every later one, whatever it wanted, gets that record back and founds
// nothing; the object created is the named ConfigMap in kube-system.
func TestRecordLedgerOverHTTP(t *testing.T) {
	s := &recordServer{}
	srv, tokenFile, caFile := apiServer(t, s.handle)
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetLedgerRecord(t.Context()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetLedgerRecord before any = %v, want ErrNotFound", err)
	}
	first := LedgerRecord{ClusterID: "0123456789abcdef", Founder: "h1"}
	got, created, err := RecordLedger(t.Context(), c, first)
	if err != nil || !created || !got.Equal(first) {
		t.Fatalf("first RecordLedger = %+v, %v, %v; want it created", got, created, err)
	}
	// The founder restarted with an empty state dir, or another agent.
	got, created, err = RecordLedger(t.Context(), c, LedgerRecord{ClusterID: "fedcba9876543210", Founder: "h1"})
	if err != nil || created || !got.Equal(first) {
		t.Fatalf("second RecordLedger = %+v, %v, %v; want the first record, not created", got, created, err)
	}
	if err := c.CreateLedgerRecord(t.Context(), first); !errors.Is(err, ErrExists) {
		t.Errorf("CreateLedgerRecord over an existing one = %v, want ErrExists", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	var obj configMapObject
	if err := json.Unmarshal(s.obj, &obj); err != nil {
		t.Fatal(err)
	}
	if obj.Kind != "ConfigMap" || obj.Metadata.Name != LedgerRecordName || obj.Metadata.Namespace != LedgerRecordNamespace || obj.Data[recordClusterKey] != first.ClusterID {
		t.Errorf("created %s", s.obj)
	}
}

func TestRecordLedgerErrors(t *testing.T) {
	s := &recordServer{bad: `configmaps is forbidden: User "system:serviceaccount:kube-system:grapevine" cannot create resource "configmaps"`}
	srv, tokenFile, caFile := apiServer(t, s.handle)
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := RecordLedger(t.Context(), c, LedgerRecord{ClusterID: "0123456789abcdef"}); err == nil || !strings.Contains(err.Error(), "forbidden") {
		t.Errorf("RecordLedger when forbidden = %v, want the API server's message", err)
	}
	if _, _, err := RecordLedger(t.Context(), c, LedgerRecord{}); err == nil {
		t.Error("RecordLedger accepted an empty cluster ID")
	}
	// A ConfigMap of that name without the cluster ID is not a record.
	s.mu.Lock()
	s.bad = ""
	s.obj = []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"grapevine-ledger","namespace":"kube-system"},"data":{"other":"x"}}`)
	s.mu.Unlock()
	if _, _, err := RecordLedger(t.Context(), c, LedgerRecord{ClusterID: "0123456789abcdef"}); err == nil || !strings.Contains(err.Error(), "holds no clusterID") {
		t.Errorf("RecordLedger over a ConfigMap without a cluster ID = %v", err)
	}
}

// TestRecordFoundersRoundTrip: the founders written with the record are
// read back in order, and a later agent's create gets them with the record.
func TestRecordFoundersRoundTrip(t *testing.T) {
	s := &recordServer{}
	srv, tokenFile, caFile := apiServer(t, s.handle)
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	first := LedgerRecord{ClusterID: "0123456789abcdef", Founder: "h1", Founders: []RecordFounder{
		{ID: "00112233445566778899aabbccddeeff", Addr: "172.16.254.1:7963"},
		{ID: "ffeeddccbbaa99887766554433221100", Addr: "172.16.254.2:7963"},
	}}
	if got, created, err := RecordLedger(t.Context(), c, first); err != nil || !created || !got.Equal(first) {
		t.Fatalf("first RecordLedger = %+v, %v, %v; want it created", got, created, err)
	}
	got, err := c.GetLedgerRecord(t.Context())
	if err != nil || !got.Equal(first) {
		t.Fatalf("GetLedgerRecord = %+v, %v; want %+v", got, err, first)
	}
	got, created, err := RecordLedger(t.Context(), c, LedgerRecord{ClusterID: "fedcba9876543210", Founder: "h2"})
	if err != nil || created || !got.Equal(first) {
		t.Fatalf("second RecordLedger = %+v, %v, %v; want the first record with its founders", got, created, err)
	}
}

// TestRecordWithoutFounders: a record written before founders were
// recorded reads as one without founders (the founder founded alone); a
// founders entry that is not a list of founders is refused.
func TestRecordWithoutFounders(t *testing.T) {
	s := &recordServer{obj: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"grapevine-ledger","namespace":"kube-system"},"data":{"clusterID":"0123456789abcdef","founder":"h1"}}`)}
	srv, tokenFile, caFile := apiServer(t, s.handle)
	c, err := NewAPIClient(srv.URL, tokenFile, caFile)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetLedgerRecord(t.Context())
	if want := (LedgerRecord{ClusterID: "0123456789abcdef", Founder: "h1"}); err != nil || !got.Equal(want) {
		t.Fatalf("GetLedgerRecord of an old record = %+v, %v; want %+v", got, err, want)
	}
	s.mu.Lock()
	s.obj = []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"grapevine-ledger","namespace":"kube-system"},"data":{"clusterID":"0123456789abcdef","founders":"h1"}}`)
	s.mu.Unlock()
	if _, err := c.GetLedgerRecord(t.Context()); err == nil || !strings.Contains(err.Error(), "founders") {
		t.Errorf("GetLedgerRecord with a bad founders entry = %v, want an error naming it", err)
	}
}
