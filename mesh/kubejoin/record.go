package kubejoin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
)

// The ConfigMap that records the cluster's block ledger. The manifest's
// RBAC grants get on this one object and create of ConfigMaps in its
// namespace (RBAC cannot restrict a create to a name), nothing else.
const (
	LedgerRecordNamespace = "kube-system"
	LedgerRecordName      = "grapevine-ledger"
)

// ErrExists: the object to create exists already (409 Conflict).
var ErrExists = errors.New("already exists")

// LedgerRecord is what the ConfigMap holds: the cluster ID of the one
// ledger of this Kubernetes cluster, written by the agent that founded it,
// before it founded it, and the ledger's first voters.
type LedgerRecord struct {
	ClusterID string
	Founder   string // node name, for people
	// Founders are the ledger's first voters, each of which founds it with
	// this same list. A record written before founders were recorded has
	// none: the founder founded alone.
	Founders []RecordFounder
}

// RecordFounder is one first voter of the recorded ledger.
type RecordFounder struct {
	ID   string `json:"id"`   // node ID, hex
	Addr string `json:"addr"` // ledger address, ip:port
}

// Equal reports whether r and o record the same ledger with the same
// founders.
func (r LedgerRecord) Equal(o LedgerRecord) bool {
	return r.ClusterID == o.ClusterID && r.Founder == o.Founder && slices.Equal(r.Founders, o.Founders)
}

// LedgerRecords reads and creates the ledger's record. APIClient is the
// real one.
type LedgerRecords interface {
	// GetLedgerRecord reads the record; ErrNotFound if there is none.
	GetLedgerRecord(ctx context.Context) (LedgerRecord, error)
	// CreateLedgerRecord creates the record, atomically: ErrExists if it
	// exists already, whatever it holds.
	CreateLedgerRecord(ctx context.Context, rec LedgerRecord) error
}

// RecordLedger creates the record want unless one exists, and returns the
// record that holds afterwards and whether it is want. The API server's
// create either makes the object or answers 409; no two agents can both
// succeed.
func RecordLedger(ctx context.Context, c LedgerRecords, want LedgerRecord) (LedgerRecord, bool, error) {
	if want.ClusterID == "" {
		return LedgerRecord{}, false, errors.New("record the ledger: empty cluster ID")
	}
	// Deleted between the create and the read (an operator clearing the
	// record): create again, a few times.
	for range 3 {
		err := c.CreateLedgerRecord(ctx, want)
		if err == nil {
			return want, true, nil
		}
		if !errors.Is(err, ErrExists) {
			return LedgerRecord{}, false, err
		}
		got, err := c.GetLedgerRecord(ctx)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return LedgerRecord{}, false, err
		}
		return got, got.Equal(want), nil
	}
	return LedgerRecord{}, false, fmt.Errorf("record the ledger: ConfigMap %s/%s keeps appearing and disappearing", LedgerRecordNamespace, LedgerRecordName)
}

// configMapObject is the part of a ConfigMap's JSON read and written.
type configMapObject struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace,omitempty"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Data map[string]string `json:"data"`
}

// Keys of the record's data.
const (
	recordClusterKey = "clusterID"
	recordFounderKey = "founder"
	// recordFoundersKey holds the founders as a JSON array; absent in
	// records written before it existed.
	recordFoundersKey = "founders"
)

const configMapsPath = "/api/v1/namespaces/" + LedgerRecordNamespace + "/configmaps"

// GetLedgerRecord reads the ConfigMap kube-system/grapevine-ledger.
func (c *APIClient) GetLedgerRecord(ctx context.Context) (LedgerRecord, error) {
	resp, err := c.get(ctx, c.http, configMapsPath+"/"+url.PathEscape(LedgerRecordName))
	if err != nil {
		return LedgerRecord{}, fmt.Errorf("read the ledger's record: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return LedgerRecord{}, fmt.Errorf("read the ledger's record: %w", statusError(resp))
	}
	var obj configMapObject
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxEventBytes)).Decode(&obj); err != nil {
		return LedgerRecord{}, fmt.Errorf("read the ledger's record: decode: %w", err)
	}
	rec := LedgerRecord{ClusterID: obj.Data[recordClusterKey], Founder: obj.Data[recordFounderKey]}
	if obj.Metadata.Name != LedgerRecordName || rec.ClusterID == "" {
		return LedgerRecord{}, fmt.Errorf("read the ledger's record: ConfigMap %s/%s holds no %s (delete it only if no agent holds a ledger)",
			LedgerRecordNamespace, LedgerRecordName, recordClusterKey)
	}
	if founders, ok := obj.Data[recordFoundersKey]; ok {
		if err := json.Unmarshal([]byte(founders), &rec.Founders); err != nil {
			return LedgerRecord{}, fmt.Errorf("read the ledger's record: ConfigMap %s/%s: %s: %w",
				LedgerRecordNamespace, LedgerRecordName, recordFoundersKey, err)
		}
	}
	return rec, nil
}

// CreateLedgerRecord creates the ConfigMap kube-system/grapevine-ledger;
// ErrExists on 409 Conflict.
func (c *APIClient) CreateLedgerRecord(ctx context.Context, rec LedgerRecord) error {
	var obj configMapObject
	obj.APIVersion, obj.Kind = "v1", "ConfigMap"
	obj.Metadata.Name, obj.Metadata.Namespace = LedgerRecordName, LedgerRecordNamespace
	obj.Metadata.Labels = map[string]string{"app.kubernetes.io/name": "grapevine"}
	obj.Data = map[string]string{recordClusterKey: rec.ClusterID, recordFounderKey: rec.Founder}
	if len(rec.Founders) > 0 {
		founders, err := json.Marshal(rec.Founders)
		if err != nil {
			return fmt.Errorf("create the ledger's record: %w", err)
		}
		obj.Data[recordFoundersKey] = string(founders)
	}
	body, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("create the ledger's record: %w", err)
	}
	resp, err := c.send(ctx, c.http, http.MethodPost, configMapsPath, body)
	if err != nil {
		return fmt.Errorf("create the ledger's record: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusCreated, http.StatusOK:
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxEventBytes))
		return nil
	case http.StatusConflict:
		return fmt.Errorf("create the ledger's record: %s: %w", resp.Status, ErrExists)
	}
	return fmt.Errorf("create the ledger's record: %w", statusError(resp))
}
