# syntax=docker/dockerfile:1
# The cplane agent image (one per tenant cluster, installed by `cplane agent install`). Build
# from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t cplane-agent:0.1.0 .
# Non-root, read-only root file system, no shell (distroless); TLS is rustls, so no OpenSSL.
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p cplane-agent --bin cplane-agent \
 && cp target/release/cplane-agent /cplane-agent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /cplane-agent /usr/local/bin/cplane-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/cplane-agent"]
