# syntax=docker/dockerfile:1
# prefork's static file server as a container image: built with the Rust toolchain, run on
# distroless (the C library and nothing else: no shell, no package manager) as a non-root user,
# with prefork as PID 1. Build: docker build -t prefork . ; run: docker run -p 8000:8000 prefork
#
# Keep both stages on the same Debian release: build.rs links with packed relocations when the
# building glibc is 2.36 or newer, and such a binary needs that glibc at run time.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts, so a rebuild compiles only what
# changed; the binary is copied out of the cache, which the next stage cannot see.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin prefork \
    && install -m 755 target/release/prefork /prefork

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /prefork /usr/local/bin/prefork
# The files to serve; the root defaults to the working directory. Replace them with yours
# (COPY --chown is not needed: they only have to be readable).
COPY public /srv/www
WORKDIR /srv/www
# distroless's nonroot user, by number so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
EXPOSE 8000 9100
# prefork is PID 1: it reaps every child and drains on TERM itself; no init shim needed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/prefork"]
# All interfaces, the health path for the balancer's checks, and the metrics listener.
# Workers default to the CPUs the container may use; WEB_CONCURRENCY or -w sets them. Every
# option can also come from PREFORK_* variables (docker run -e PREFORK_SHUTDOWN_DELAY=10s).
CMD ["serve", "--bind", "0.0.0.0:8000", "--health-path", "/healthz", "--metrics-bind", "0.0.0.0:9100"]
