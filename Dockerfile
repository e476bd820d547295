# A small image for wharf: build in the Rust image, run on Debian slim.
#   docker build -t wharf .
#   docker run -p 7700:7700 -v wharf-data:/var/lib/wharf wharf
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p wharf-cli \
 && strip target/release/wharf

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/wharf --create-home wharf
COPY --from=build /src/target/release/wharf /usr/local/bin/wharf
USER wharf
WORKDIR /var/lib/wharf
# Listen on all interfaces inside the container; publishing the port decides who reaches it.
# Without tokens that is an explicit choice (WHARF_AUTH_ALLOW_INSECURE_REMOTE); for anything
# beyond a private network, mount a config with [auth] enabled and tokens.
ENV WHARF_LISTEN=0.0.0.0:7700 \
    WHARF_DATA_DIR=/var/lib/wharf/data \
    WHARF_AUTH_ALLOW_INSECURE_REMOTE=true
EXPOSE 7700
VOLUME ["/var/lib/wharf"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7700 && printf 'GET /readyz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q 200"]
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve"]
