# teal in a container: built with the Rust toolchain, run on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
COPY bench bench
COPY tests tests
RUN cargo build --release --locked --bin teal

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/teal /usr/local/bin/teal
EXPOSE 9187
USER nobody
ENTRYPOINT ["/usr/local/bin/teal"]
