# Grapevine's image: the agent (entrypoint), the NetworkPolicy enforcer
# grapevine-policy (the DaemonSet's second container) and the CNI plugins
# that the DaemonSet's init container copies onto the host. Build with `make image`,
# or without a container engine with `make image-archive` (the same layout,
# entrypoint and labels; e2e/cmd/imagearchive checks that they agree).

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

# scratch: static binaries only, nothing else. No shell or package manager to
# patch or to exploit, and no base image to pull, so `make image-archive`
# builds the very same image offline. The init container copies the plugins
# with `grapevine install-cni`; an operator reaches the agent with
# `kubectl exec ... -- grapevine status`. distroless/static would add CA
# certificates, tzdata and /etc/passwd, none of which the agent uses (it
# trusts the API server through the service account's ca.crt).
FROM scratch
ARG VERSION=dev
LABEL org.opencontainers.image.title="grapevine" \
      org.opencontainers.image.description="Grapevine: a routed L3 pod network with gossip instead of BGP and etcd" \
      org.opencontainers.image.version="${VERSION}"
ENV PATH=/usr/local/bin
COPY --from=build /out/grapevine /usr/local/bin/grapevine
COPY --from=build /out/grapevine-policy /usr/local/bin/grapevine-policy
COPY --from=build /out/grapevine-cni /out/grapevine-ipam /out/cni/portmap /out/cni/loopback /opt/grapevine/cni/
ENTRYPOINT ["/usr/local/bin/grapevine"]
CMD ["agent"]
