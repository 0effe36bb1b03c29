# syntax=docker/dockerfile:1
# The model-server with the model repository baked in, so a new replica
# serves without downloading anything. Build from the repository root:
#   docker build -f deploy/docker/model-server.Dockerfile \
#     --build-arg MODEL_VERSIONS=1 -t mlgw/model-server:fraud-v1 .
#   docker build -f deploy/docker/model-server.Dockerfile \
#     --build-arg MODEL_VERSIONS=2 -t mlgw/model-server:fraud-v2 .   # the canary
# MODEL_VERSIONS keeps only those version folders of every model (space-
# separated); a model with none of them is left out of the image (the canary
# image holds fraud_detector 2 only); empty keeps them all. The server serves
# what it finds.

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
    cargo build --release --locked -p model-server --bin model-server \
    && install -D -m 0755 target/release/model-server /out/model-server

FROM docker.io/library/debian:bookworm-slim AS models
ARG MODEL_VERSIONS=""
COPY model-server/models /models
# Keep the chosen versions; leave out a model without any of them (an empty
# model folder would make the server refuse the repository), and refuse a
# build that keeps no model at all.
RUN set -eu; \
    if [ -n "$MODEL_VERSIONS" ]; then \
      for model in /models/*/; do \
        for dir in "$model"*/; do \
          v="$(basename "$dir")"; \
          case " $MODEL_VERSIONS " in *" $v "*) ;; *) rm -rf "$dir" ;; esac; \
        done; \
        ls -d "$model"*/ >/dev/null 2>&1 || rm -rf "$model"; \
      done; \
      ls -d /models/*/ >/dev/null 2>&1 \
        || { echo "no model has a version in MODEL_VERSIONS=$MODEL_VERSIONS" >&2; exit 1; }; \
    fi; \
    chmod -R a+rX,go-w /models

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/model-server /usr/local/bin/model-server
COPY --from=models /models /models
USER 65532:65532
# REST (/v2/..., /v2/health/live, /v2/health/ready) and gRPC
# (inference.GRPCInferenceService, grpc.health.v1).
EXPOSE 8000 8001
# No HEALTHCHECK: no shell or curl in the image; Kubernetes probes the
# health endpoints instead.
ENTRYPOINT ["/usr/local/bin/model-server"]
CMD ["--model-repository", "/models", "--host", "0.0.0.0", "--http-port", "8000", "--grpc-port", "8001", "--log-json"]
