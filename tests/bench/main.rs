//! `make bench`: the figures from `shared/spec/quality.md`, each a median over several runs.

fn main() {}
