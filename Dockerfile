# A small image for wharf: build in the Rust image, run on Debian slim.
#   docker build -t wharf .
# The image listens on all interfaces, so it serves with tokens only ([auth] enabled): it reads
# /etc/wharf/config.toml, which must list them. Make a token and its hash with
#   docker run --rm wharf token new
# put the hash in a config file
#   [[auth.tokens]]
#   name = "backend"
#   sha256 = "…"
#   publish = [">"]
#   subscribe = [">"]
#   consumers = ["*"]
# and mount it:
#   docker run -p 7700:7700 -v $PWD/wharf.toml:/etc/wharf/config.toml:ro \
#     -v wharf-data:/var/lib/wharf wharf
# Without it the broker refuses to start and says why (SECURITY.md).
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
# Listen on all interfaces inside the container: whoever reaches the published port needs a
# token. Serving without tokens is never the image's default.
ENV WHARF_LISTEN=0.0.0.0:7700 \
    WHARF_DATA_DIR=/var/lib/wharf/data \
    WHARF_AUTH_ENABLED=true
EXPOSE 7700
VOLUME ["/var/lib/wharf"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=2s CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7700 && printf 'GET /readyz HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3 && head -1 <&3 | grep -q 200"]
ENTRYPOINT ["/usr/local/bin/wharf"]
CMD ["serve", "--config", "/etc/wharf/config.toml"]
