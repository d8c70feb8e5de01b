# Streamward's one entry point: `just --list` explains every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list --unsorted

# Build every crate and test target.
build:
    cargo build --workspace --all-targets

# Format the code.
fmt:
    cargo fmt --all

# Check formatting, clippy (warnings are errors) and that crds/ matches api/.
lint: crds-check
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Generate the CRD YAML in crds/ from the types in api/.
crds:
    cargo run -q -p streamward-operator --bin crdgen -- crds

# Fail if crds/ is stale (run `just crds` and commit to fix).
crds-check:
    #!/usr/bin/env bash
    set -euo pipefail
    fresh=$(mktemp -d)
    trap 'rm -rf "$fresh"' EXIT
    cargo run -q -p streamward-operator --bin crdgen -- "$fresh"
    if ! diff -r --exclude=.gitkeep crds "$fresh"; then
        echo "crds/ is stale: run 'just crds' and commit the result" >&2
        exit 1
    fi

# Install and cache what the e2e tests run: Kafka jars, kube-apiserver/etcd/kubectl, kcat, confluent-kafka.
provision:
    cargo run -q -p streamward-e2e --bin provision

# Unit tests: fast and pure, no Kafka, no Kubernetes.
unit:
    cargo test --workspace --exclude streamward-e2e

# End-to-end tests against real Kafka (1 and 3 nodes), a real kube-apiserver and real clients.
e2e: provision
    cargo test -p streamward-e2e -- --nocapture

# Everything CI runs: lint, unit and end-to-end tests.
test: lint unit e2e

# The demo: real Kafka, the proxy and the collector with the sample policies.
demo:
    @echo "The Streamward demo needs the proxy, which is not built yet."
    @echo "Today 'just demo' can only show the harness it will run on: 'just e2e' starts real Kafka and a real kube-apiserver."
