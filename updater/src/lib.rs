//! Keeps butler current from a broth-style package server; knows nothing of JSON-RPC or log bundles.
