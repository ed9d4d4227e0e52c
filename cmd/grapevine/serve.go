package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/grapevine-net/grapevine/internal/ownersock"
)

// serve starts the status socket and, when configured, the metrics and health
// endpoints. Both stop when ctx ends.
func (a *agent) serve(ctx context.Context) (*sync.WaitGroup, error) {
	var wg sync.WaitGroup
	if err := os.MkdirAll(a.opts.RunDir, 0o755); err != nil {
		return nil, fmt.Errorf("create --run-dir: %w", err)
	}
	sock := filepath.Join(a.opts.RunDir, statusSocketName)
	statusLn, err := ownersock.Listen(sock, "status socket")
	if err != nil {
		return nil, err
	}
	a.serveHTTP(ctx, &wg, statusLn, a.statusHandler())

	if a.opts.MetricsAddr != "" {
		metricsLn, err := net.Listen("tcp", a.opts.MetricsAddr)
		if err != nil {
			statusLn.Close()
			return nil, fmt.Errorf("--metrics-addr: %w", err)
		}
		a.serveHTTP(ctx, &wg, metricsLn, a.metricsHandler())
	}
	return &wg, nil
}

func (a *agent) serveHTTP(ctx context.Context, wg *sync.WaitGroup, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("http server stopped", "addr", ln.Addr(), "err", err)
		}
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shutdownCtx)
	}()
}

func (a *agent) statusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		a.waitForPass(r.Context(), statusWait)
		enc.Encode(a.fullStatus(r.Context()))
	})
	mux.HandleFunc("GET /doctor/all", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.doctorAll(r.Context()))
	})
	mux.HandleFunc("POST /release", func(w http.ResponseWriter, r *http.Request) {
		name := r.URL.Query().Get("node")
		if name == "" {
			http.Error(w, "missing ?node=", http.StatusBadRequest)
			return
		}
		if err := a.mesh.Release(r.Context(), name); err != nil {
			// mesh's errors name their package; the operator needs only
			// the reason.
			reason := strings.TrimPrefix(err.Error(), "mesh: ")
			http.Error(w, fmt.Sprintf("cannot release the block of %s: %s", name, reason), http.StatusConflict)
			return
		}
		a.log.Info("released block of dead node on operator request", "released", name)
		fmt.Fprintf(w, "released the block of %s\n", name)
	})
	// Go's profiles, on the root-only socket and never on the network:
	// curl --unix-socket <run-dir>/grapevine.sock http://agent/debug/pprof/profile?seconds=60
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

func (a *agent) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if since, stuck := a.stuck(); stuck {
			http.Error(w, fmt.Sprintf("reconcile loop stuck for %s", since.Round(time.Second)), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		st := a.settledStatus(r.Context(), readinessWait)
		if !st.Ready {
			http.Error(w, "not ready: "+st.Reason, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintf(w, "ready: %s holds %s\n", st.Node, st.Block)
	})
	return mux
}
