# syntax=docker/dockerfile:1
# One build for both images:
#   docker build --target producer-api -t cleanup/producer-api .
#   docker build --target worker -t cleanup/worker .
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# Dependencies are built from the recipe alone, so they are cached until Cargo.lock changes.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked -p producer-api -p worker -p cleanupctl \
    && strip target/release/producer-api target/release/worker target/release/cleanupctl

FROM gcr.io/distroless/cc-debian12:nonroot AS producer-api
COPY --from=builder /src/target/release/producer-api /usr/local/bin/producer-api
# The CLI, for `kubectl exec deploy/producer-api -- cleanupctl tasks list`.
COPY --from=builder /src/target/release/cleanupctl /usr/local/bin/cleanupctl
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/producer-api"]

FROM gcr.io/distroless/cc-debian12:nonroot AS worker
COPY --from=builder /src/target/release/worker /usr/local/bin/worker
USER 65532:65532
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/worker"]
