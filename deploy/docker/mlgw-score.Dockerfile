# syntax=docker/dockerfile:1
# mlgw-score, the batch-scoring job. Build from the repository root:
#   docker build -f deploy/docker/mlgw-score.Dockerfile -t mlgw/mlgw-score:0.1.0 .
# Runs as a non-root user on a distroless base. It reads the gateway's
# config (mounted at /etc/mlgw, as the gateway's ConfigMap is) for the store,
# the models' endpoints and the feature definitions.

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
    cargo build --release --locked -p gateway --bin mlgw-score \
    && install -D -m 0755 target/release/mlgw-score /out/mlgw-score

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/mlgw-score /usr/local/bin/mlgw-score
USER 65532:65532
# A CLI: no ports, no HEALTHCHECK.
ENTRYPOINT ["/usr/local/bin/mlgw-score"]
CMD ["--help"]
