//! The release tool: writes the broth tree (LATEST, versions, archives, signed manifests).

fn main() {}
