# syntax=docker/dockerfile:1
# The qtier image that `qtier k8s` manifests run: the init container (`qtier pull`), the server
# (`qtier serve`) and the bench Jobs (`qtier bench model`, `qtier publish-report`).
#
#   docker build -t qtier:latest .
#
# Two stages: the builder compiles the release binary; the runtime image holds only that binary,
# CA certificates (for S3 over TLS) and a non-root user.

FROM rust:1.95-slim-bookworm AS builder
# C and C++ compilers and cmake for the crates that build native code (aws-lc-sys, esaxx-rs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY . .
# Cache mounts keep the registry and the build directory between builds; the binary is copied out
# of the cache in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --bin qtier \
    && cp target/release/qtier /usr/local/bin/qtier

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A numeric user, so the kubelet can check `runAsNonRoot`; the same id as RUN_AS_ID in src/k8s.rs.
RUN groupadd --gid 10001 qtier \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/qtier --shell /usr/sbin/nologin qtier
COPY --from=builder /usr/local/bin/qtier /usr/local/bin/qtier
USER 10001:10001
WORKDIR /home/qtier
ENTRYPOINT ["qtier"]
CMD ["--help"]
