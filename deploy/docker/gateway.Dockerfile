# syntax=docker/dockerfile:1
# The gateway. Build from the repository root (the build context):
#   docker build -f deploy/docker/gateway.Dockerfile -t mlgw/gateway:0.1.0 .
# Runs as a non-root user on a distroless base (glibc, no shell). The config
# is not baked in: mount it at /etc/mlgw (the Kubernetes ConfigMap does).

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Every workspace member's manifest must be present for `--locked` to resolve
# the workspace; sources of the other crates are small.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY telemetry telemetry
COPY feature-store feature-store
COPY model-server model-server
COPY gateway gateway
COPY tests tests
COPY benches benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway --bin gateway \
    && install -D -m 0755 target/release/gateway /out/gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/gateway /usr/local/bin/gateway
# distroless' "nonroot" user, numeric so runAsNonRoot can verify it.
USER 65532:65532
# REST (/v1, /healthz, /readyz, /metrics) and gRPC (gateway.v1, grpc.health.v1).
EXPOSE 8080 8081
# No HEALTHCHECK: there is no shell or curl in the image; Kubernetes probes
# /healthz, /readyz and grpc.health.v1 instead.
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["--config", "/etc/mlgw/gateway.toml"]
