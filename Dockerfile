# cdc-invalidator container image.
#
#   docker build -t cdc-invalidator:local .
#   docker run --rm --read-only --tmpfs /tmp \
#     -v "$PWD/examples/shop/config.toml:/etc/cdc-invalidator/config.toml:ro" \
#     -e CDC_KAFKA_BROKERS=... -e CDC_REDIS_URL=... -e CDC_ADMIN_LISTEN=0.0.0.0:9799 \
#     -p 127.0.0.1:9799:9799 cdc-invalidator:local
#
# The runtime runs as user 10001:10001 (numeric, so Kubernetes' runAsNonRoot
# can check it) and writes nothing outside /tmp: it runs with a read-only root
# filesystem, as the Helm chart (deploy/helm/cdc-invalidator) starts it.
#
# Works with the classic builder and with BuildKit (no cache mounts needed).

# ---------------------------------------------------------------- build
# The toolchain must satisfy the newest rust-version among the locked crates,
# not only the package's own rust-version: sqlx 0.9 (in Cargo.lock) needs
# Rust 1.94, so 1.85 cannot build this lockfile.
FROM rust:1.95.0-bookworm AS build

# What rdkafka's features need: cmake-build compiles the vendored librdkafka
# (cmake, a C/C++ toolchain); ssl links OpenSSL (also used by native-tls for
# redis and sqlx); libz through pkg-config. zstd is built from source by
# zstd-sys with the C compiler.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /build
# SQLX_OFFLINE: any sqlx::query! macros compile from the checked-in .sqlx
# data, never from a live database.
ENV CARGO_TERM_COLOR=never \
    SQLX_OFFLINE=true

# Dependencies first, in their own layer, so that a change to src/ does not
# rebuild librdkafka and the rest of the tree. The placeholder crate is only
# a cache warm-up: if it cannot build (say the manifest grows a build script),
# the real build below does all the work.
COPY Cargo.toml Cargo.lock ./
# The warm-up builds a workspace of the daemon alone, with stubs for it and
# the crates it names by path (the key-rendering crate; the Rust reader, a
# dev-dependency): as members, the reader and bench/ would need the benches
# and examples their manifests list. Cargo keeps the versions Cargo.lock pins;
# the real manifest and lockfile are put back before the real, --locked build.
COPY crates/cdc-keys/Cargo.toml crates/cdc-keys/Cargo.toml
COPY readers/rust/Cargo.toml readers/rust/Cargo.toml
RUN cp Cargo.toml Cargo.lock /tmp/ \
 && sed -i 's|^members = .*|members = ["."]|' Cargo.toml \
 && for stub in . crates/cdc-keys readers/rust; do mkdir -p "$stub/src" && : > "$stub/src/lib.rs"; done \
 && echo 'fn main() {}' > src/main.rs \
 && (cargo build --release --bin cdc-invalidator || echo "dependency warm-up failed; the full build will compile everything") \
 && mv /tmp/Cargo.toml /tmp/Cargo.lock . \
 && rm -rf src crates readers target/release/cdc-invalidator* \
      target/release/.fingerprint/cdc-invalidator-* target/release/.fingerprint/cdc-keys-* \
      target/release/deps/cdc_invalidator-* target/release/deps/libcdc_invalidator-* \
      target/release/deps/cdc_keys-* target/release/deps/libcdc_keys-*

COPY . .
RUN cargo build --release --locked --bin cdc-invalidator \
 && install -D -m 0755 target/release/cdc-invalidator /out/cdc-invalidator

# ---------------------------------------------------------------- runtime
# Debian 12 (bookworm), the same release as the builder, pinned to a point release.
FROM debian:12.11-slim

# ca-certificates for TLS to brokers, Redis and PostgreSQL; libssl3 is the
# OpenSSL the binary links against. zlib and the C/C++ runtimes are in the base.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 cdc \
 && useradd --system --uid 10001 --gid cdc --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin cdc \
 && mkdir -p /etc/cdc-invalidator

COPY --from=build /out/cdc-invalidator /usr/local/bin/cdc-invalidator

USER 10001:10001
# Admin HTTP: /metrics, /healthz, /readyz.
EXPOSE 9799
# For Docker and Podman (Kubernetes ignores it and uses the chart's probes):
# the process answers /healthz. The image has bash but no curl, so a raw
# HTTP/1.0 GET over bash's /dev/tcp, on the port of CDC_ADMIN_LISTEN when it
# is set (9799 otherwise) at the loopback address. `audit` listens elsewhere
# (--listen): give its container a healthcheck of its own.
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=6 \
  CMD bash -c 'port=${CDC_ADMIN_LISTEN##*:}; exec 3<>"/dev/tcp/127.0.0.1/${port:-9799}" && printf "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n" >&3 && head -n 1 <&3 | grep -q " 200"'
ENTRYPOINT ["cdc-invalidator"]
CMD ["run", "--config", "/etc/cdc-invalidator/config.toml"]
