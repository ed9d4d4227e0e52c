# Grapevine's image: the agent (entrypoint) and the CNI plugins that the
# DaemonSet's init container copies onto the host. Build with `make image`.

FROM golang:1.26 AS build
WORKDIR /src
ARG VERSION=dev
# The reference plugins chained after grapevine-cni (portmap) and required by
# the container runtime for the pod's lo (loopback), built from source at the
# version the Makefile pins.
ARG CNI_PLUGINS_VERSION=v1.10.0
RUN CGO_ENABLED=0 GOBIN=/out/cni go install -trimpath -ldflags "-s -w" \
      github.com/containernetworking/plugins/plugins/meta/portmap@${CNI_PLUGINS_VERSION} \
      github.com/containernetworking/plugins/plugins/main/loopback@${CNI_PLUGINS_VERSION}
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/ ./cmd/...

# Alpine rather than distroless: the init container needs sh, cp and mv, and
# an operator debugging a node wants a shell next to `grapevine status`.
FROM alpine:3.22
COPY --from=build /out/grapevine /usr/local/bin/grapevine
COPY --from=build /out/grapevine-cni /out/grapevine-ipam /out/cni/portmap /out/cni/loopback /opt/grapevine/cni/
ENTRYPOINT ["/usr/local/bin/grapevine"]
CMD ["agent"]
