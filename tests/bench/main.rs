//! `make bench`: the figures from `shared/spec/quality.md`, each a median over several runs.

mod streaming;

fn main() {
    streaming::run();
}
