-- The daemon's own state: key/value settings (never secrets in clear text).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
