//! `make bench`: the figures from `shared/spec/quality.md`, each a median over several runs.

mod update;

fn main() {
    update::run();
}
