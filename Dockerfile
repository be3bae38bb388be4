# The Sluice image: `sluice-server` (the entrypoint) and the `sluice` CLI, nothing else.
#
# Build it with `docker/build.sh`, not `docker build .`: no base image can be pulled
# where this project is built, so there is no builder stage. The script builds static
# binaries on the host (glibc with +crt-static; glommio's io_uring needs no dynamic
# library), puts them in a build context next to this file and runs `docker build`.
#
#   docker/build.sh && docker run --rm sluice:dev --help
#
# SLUICE_BIN_DIR=target/debug docker/build.sh: a dev image (sluice:local) of dynamically
# linked binaries, with the libraries `ldd` lists and the loader in rootfs/ (tests only).
#
# Running it: the broker needs io_uring (see docs/deploy/README.md, "Docker"):
#   --security-opt seccomp=docker/seccomp-io-uring.json   (or seccomp=unconfined)
#   --ulimit memlock=67108864                             (locked memory for the rings)
# Static glibc cannot load NSS modules, so addresses in configs and `sluice --server`
# must be IP:port inside the image (the broker never resolves names itself).
FROM scratch

# 65532: an unprivileged uid/gid (no /etc/passwd needed).
COPY --chown=65532:65532 rootfs/ /
COPY sluice-server sluice /usr/local/bin/

USER 65532:65532
WORKDIR /var/lib/sluice
VOLUME ["/var/lib/sluice"]
# Client QUIC (UDP), admin HTTP (TCP), peer links (UDP): the ports of docs/deploy.
EXPOSE 7001/udp 7081/tcp 7101/udp
ENTRYPOINT ["/usr/local/bin/sluice-server"]
CMD ["--config", "/etc/sluice/sluice.toml"]
