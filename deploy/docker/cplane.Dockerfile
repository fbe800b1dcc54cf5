# syntax=docker/dockerfile:1
# The cplane control plane image. Build from the repository root (the build stage runs
# `git describe`, so `cplane --version` names the commit):
#   docker build -f deploy/docker/cplane.Dockerfile -t cplane:0.1.0 .
# The image runs as a non-root user on a read-only root file system (see deploy/templates/)
# and has no shell: distroless holds glibc, OpenSSL (git's https transport) and CA certificates.
FROM docker.io/library/rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev pkg-config git \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cplane-reconciler --bin cplane \
 && cp target/release/cplane /cplane

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cplane /usr/local/bin/cplane
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cplane"]
CMD ["serve"]
