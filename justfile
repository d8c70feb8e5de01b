# Streamward's one entry point: `just --list` explains every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

target_dir := env_var_or_default("CARGO_TARGET_DIR", justfile_directory() / "target")

# The programs the images are made of (`just images`, the image and node tests), as cargo builds them.
release_programs := "-p streamward-operator -p streamward-sidecar -p streamward-collector --bin streamward-operator --bin streamward-sidecar --bin streamward-collector"

# List the recipes.
default:
    @just --list --unsorted

# Build every crate and test target.
build:
    cargo build --workspace --all-targets

# Format the code.
fmt:
    cargo fmt --all

# Check formatting, clippy (warnings are errors), that crds/ matches api/ and config/install.yaml the chart.
lint: crds-check manifests-check
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Generate the CRD YAML in crds/ from the types in api/, and the same bytes into the chart's crds/ (Helm installs CRDs only from there).
crds:
    cargo run -q -p streamward-operator --bin crdgen -- crds
    cargo run -q -p streamward-operator --bin crdgen -- charts/streamward/crds

# Fail if crds/ or charts/streamward/crds/ is stale (run `just crds` and commit to fix).
crds-check:
    #!/usr/bin/env bash
    set -euo pipefail
    fresh=$(mktemp -d)
    trap 'rm -rf "$fresh"' EXIT
    cargo run -q -p streamward-operator --bin crdgen -- "$fresh"
    stale=0
    for dir in crds charts/streamward/crds; do
        if ! diff -r --exclude=.gitkeep "$dir" "$fresh"; then
            echo "$dir/ is stale: run 'just crds' and commit the result" >&2
            stale=1
        fi
    done
    exit $stale

# Render config/install.yaml (plain manifests) from charts/streamward with its default values.
manifests:
    cargo run -q -p streamward-e2e --bin manifests

# Fail if config/install.yaml is stale (run `just manifests` and commit to fix).
manifests-check:
    cargo run -q -p streamward-e2e --bin manifests -- --check

# Install and cache what the e2e tests run: Kafka jars, Kroxylicious jars (a benchmark peer), kube-apiserver/etcd/kubectl, helm, the test node (kubelet & co, containerd, CoreDNS, images), kcat, confluent-kafka.
provision:
    cargo run -q -p streamward-e2e --bin provision

# One OCI image per program (operator, proxy, collector), no container daemon: <cache>/images/<name>-<version>.oci.tar.
images:
    cargo build -q --release {{release_programs}}
    cargo run -q --release -p streamward-e2e --bin images -- --binaries {{target_dir}}/release

# Unit tests: fast and pure, no Kafka, no Kubernetes.
unit:
    cargo test --workspace --lib --bins

# End-to-end tests against real Kafka (1 and 3 nodes), a real kube-apiserver and real clients; the harness's own (images, node, helm) last.
e2e: provision
    cargo test --workspace --exclude streamward-e2e --test '*'
    cargo test -p streamward-e2e --test '*'

# Fuzz decode → mask → encode of record batches for `seconds`, in release (`just e2e` runs it for 10 s).
fuzz-mask seconds="60":
    STREAMWARD_FUZZ_SECONDS={{seconds}} cargo test -q --release -p streamward-sidecar --test mask_fuzz -- --nocapture

# Check config/samples/ against its cases with the kubectl plugin, offline (`kubectl streamward policy test`).
policy-test:
    cargo run -q -p kubectl-streamward -- policy test config/samples --cases config/policy-tests/samples.yaml

# The plugin as a krew archive, and plugins/krew/streamward.yaml with its sha256, in <target>/krew/ (`kubectl krew install --manifest=… --archive=…`).
krew-archive profile="release":
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "{{profile}}" = release ]; then cargo build -q --release -p kubectl-streamward; else cargo build -q -p kubectl-streamward; fi
    out="{{target_dir}}/krew"
    rm -rf "$out" && mkdir -p "$out/stage"
    cp "{{target_dir}}/{{ if profile == "release" { "release" } else { "debug" } }}/kubectl-streamward" "$out/stage/"
    archive="$out/kubectl-streamward-linux-amd64.tar.gz"
    tar -C "$out/stage" -czf "$archive" kubectl-streamward
    sum=$(sha256sum "$archive" | cut -d' ' -f1)
    sed "s/sha256: \"0\{64\}\"/sha256: \"$sum\"/" plugins/krew/streamward.yaml > "$out/streamward.yaml"
    grep -q "$sum" "$out/streamward.yaml"
    echo "$archive"
    echo "$out/streamward.yaml (sha256 $sum)"

# Everything CI runs: lint, unit tests, the samples' policy cases and end-to-end tests.
test:
    #!/usr/bin/env bash
    set -euo pipefail
    # The image and node tests need the three programs' release build (minutes on 2 cores). It
    # starts first at the lowest CPU priority, so it takes only the CPU the rest leaves idle
    # while tests wait on Kafka and the API server; those two tests run last and wait on
    # cargo's lock for whatever is left of it.
    log=$(mktemp)
    nice -n 19 cargo build -q --release {{release_programs}} >"$log" 2>&1 &
    release=$!
    trap 'kill $release 2>/dev/null || true; rm -f "$log"' EXIT
    {{just_executable()}} lint unit policy-test e2e
    wait $release || { echo "the background release build failed (the tests built it again):"; cat "$log"; }

# The demo: real Kafka, the proxy with config/samples/ and the collector, driven by real clients; ends with the audit trail.
demo: provision
    cargo build -q -p streamward-sidecar -p streamward-collector
    cargo run -q -p streamward-e2e --bin demo -- --sidecar {{target_dir}}/debug/streamward-sidecar --collector {{target_dir}}/debug/streamward-collector

# The demo in pods, on a one-node Kubernetes built here (root): helm install, config/samples/, injected kcat and Python clients; allowed/denied, masked/exempt, a grant and its revocation; ends with the audit trail.
demo-cluster: provision
    cargo build -q --release {{release_programs}}
    cargo run -q -p streamward-e2e --bin demo_cluster -- --binaries {{target_dir}}/release

# Benchmark side by side, one run on one broker: direct, Streamward (policy; +audit; +audit +masking), Kroxylicious (passthrough; +record rewrite). Writes results.md, results.json, throughput.svg to `out`.
bench records="200000" rounds="2" out=(target_dir / "bench-results"): provision
    cargo build -q --release -p streamward-sidecar -p streamward-collector --bin streamward-sidecar --bin streamward-collector
    cargo run -q --release -p streamward-e2e --bin bench -- --sidecar {{target_dir}}/release/streamward-sidecar --collector {{target_dir}}/release/streamward-collector --records {{records}} --rounds {{rounds}} --out {{out}}

# Benchmark: Kafka's producer/consumer performance tools direct and through the proxy, same run.
bench-proxy records="1000000": provision
    cargo build -q --release -p streamward-sidecar
    cargo run -q --release -p streamward-e2e --bin bench_proxy -- --sidecar {{target_dir}}/release/streamward-sidecar --records {{records}}

# Benchmark masking: the engine (criterion, one core) and consume throughput through the proxy with and without masking, same run.
bench-mask records="200000": provision
    cargo bench -q -p streamward-sidecar --bench mask
    cargo build -q --release -p streamward-sidecar
    cargo run -q --release -p streamward-e2e --bin bench_mask -- --sidecar {{target_dir}}/release/streamward-sidecar --records {{records}}

# Benchmark: proxy throughput and round trips with audit on vs off (to a real collector), same run.
bench-audit records="1000000" rounds="2": provision
    cargo build -q --release -p streamward-sidecar -p streamward-collector
    cargo run -q --release -p streamward-e2e --bin bench_audit -- --sidecar {{target_dir}}/release/streamward-sidecar --collector {{target_dir}}/release/streamward-collector --records {{records}} --rounds {{rounds}}

# Benchmark: audit events/s the collector durably stores over HTTP (batches of 500, concurrent senders), release build.
bench-collector events="200000" senders="8":
    cargo bench -p streamward-collector --bench ingest -- --events {{events}} --senders {{senders}}

# Benchmark: query, timeline, aggregation, verify and `kubectl streamward evidence` times over a store of 1,000,000 events written through the real store code (a markdown table).
bench-query events="1000000":
    cargo build -q --release -p streamward-collector -p kubectl-streamward
    cargo bench -q -p streamward-collector --bench query -- --events {{events}} --collector {{target_dir}}/release/streamward-collector --plugin {{target_dir}}/release/kubectl-streamward

# Benchmark: compile 1,000 StreamPolicies and 10,000 AccessGrants, and the operator's plan of that namespace.
bench-operator:
    cargo bench -q -p streamward-operator --bench compile

# Benchmark: pod admission latency with the injection webhook, through a real kube-apiserver and directly, same run.
bench-admission requests="1000": provision
    cargo bench -q -p streamward-operator --bench admission -- --requests {{requests}}
