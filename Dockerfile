# The `vtpga` binary in a small runtime image (one binary: run, produce, seed, topics,
# web, loadtest ...; docker-compose.yml runs each as its own service).
#
#   docker build -t vtpga .
#   docker run --rm vtpga --help
#
# Stage 1 builds with the official Rust image (Debian bookworm). rdkafka builds librdkafka
# from source with its own configure/make (no cmake, no libcurl): a C compiler, make, perl
# and zlib's headers; TLS to PostgreSQL links the system's OpenSSL (pkg-config, libssl-dev).
ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        g++ make perl pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin vtpga \
    && install -m 0755 target/release/vtpga /usr/local/bin/vtpga

# Stage 2: Debian bookworm slim with what the binary links (glibc, zlib, OpenSSL) and CA
# certificates; a non-root user; /data for the reference CSVs shared between services.
FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates zlib1g libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /nonexistent --shell /usr/sbin/nologin vtpga \
    && mkdir -p /data \
    && chown vtpga:vtpga /data
COPY --from=build /usr/local/bin/vtpga /usr/local/bin/vtpga
USER vtpga
WORKDIR /data
EXPOSE 8080
ENTRYPOINT ["vtpga"]
CMD ["--help"]
