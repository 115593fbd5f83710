# Multi-stage build of the `sinkron` binary.
#   docker build -t sinkron .
#   docker run --rm -p 8001:8001 -e CLUSTER_SECRET=$(openssl rand -hex 16) \
#     sinkron serve --cluster-addrs node1=localhost:8001
# (bound to 0.0.0.0, a node needs TLS_* or CLUSTER_SECRET; docker-compose.yml uses TLS)
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY crates ./crates
RUN cargo build --release --locked -p sinkron-cli \
 && strip target/release/sinkron

FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/sinkron sinkron \
 && mkdir -p /var/lib/sinkron && chown sinkron /var/lib/sinkron
COPY --from=build /src/target/release/sinkron /usr/local/bin/sinkron
USER sinkron
ENV DATA_DIR=/var/lib/sinkron NODE_BIND=0.0.0.0 SINKRON_ENDPOINT=127.0.0.1:8001
VOLUME /var/lib/sinkron
EXPOSE 8001 8002 8003
STOPSIGNAL SIGTERM
# GET /ready needs no token; set SINKRON_ENDPOINT (and SINKRON_CACERT with TLS) per node.
HEALTHCHECK --interval=5s --timeout=2s CMD ["/usr/local/bin/sinkron", "cluster", "ready"]
ENTRYPOINT ["/usr/local/bin/sinkron"]
CMD ["serve"]
