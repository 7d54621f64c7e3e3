-- Versions that failed their probation after a restart in place (crashed, exited or never
-- answered): not offered again until a newer one appears.
CREATE TABLE update_bad_versions (
    channel  TEXT NOT NULL,
    version  TEXT NOT NULL,
    reason   TEXT NOT NULL,
    time     INTEGER NOT NULL,           -- unix seconds
    PRIMARY KEY (channel, version)
);
