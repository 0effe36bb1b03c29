# syntax=docker/dockerfile:1
# `mlgw-features`, the data engineers' CLI, for refresh jobs and schema
# upgrades (the Kubernetes CronJob and Job run it). Build from the root:
#   docker build -f deploy/docker/mlgw-features.Dockerfile -t mlgw/mlgw-features:0.1.0 .

ARG RUST_VERSION=1.95
FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
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
    cargo build --release --locked -p feature-store --bin mlgw-features \
    && install -D -m 0755 target/release/mlgw-features /out/mlgw-features

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mlgw-features /usr/local/bin/mlgw-features
USER 65532:65532
# A CLI: no ports, no HEALTHCHECK.
ENTRYPOINT ["/usr/local/bin/mlgw-features"]
CMD ["--help"]
