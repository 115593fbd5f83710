# Multi-stage build of the `sinkron` binary.
#   docker build -t sinkron .
#   docker run --rm -p 8001:8001 sinkron serve --cluster-addrs node1=localhost:8001
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
ENV DATA_DIR=/var/lib/sinkron NODE_BIND=0.0.0.0
VOLUME /var/lib/sinkron
EXPOSE 8001 8002 8003
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s CMD ["/usr/local/bin/sinkron", "cluster", "status", "--endpoint", "127.0.0.1:8001"]
ENTRYPOINT ["/usr/local/bin/sinkron"]
CMD ["serve"]
