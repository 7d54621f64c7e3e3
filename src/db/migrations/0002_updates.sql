-- The updater's memory: every update outcome, and which channels have served signatures (so an
-- unsigned answer from them later is refused as a downgrade attack).
CREATE TABLE update_history (
    id            INTEGER PRIMARY KEY,
    time          INTEGER NOT NULL,           -- unix seconds
    action        TEXT NOT NULL,              -- check | upgrade | rollback
    channel       TEXT NOT NULL,
    install_path  TEXT NOT NULL,
    from_version  TEXT,
    to_version    TEXT,
    outcome       TEXT NOT NULL,              -- up-to-date | available | installed | rolled-back | failed
    step          TEXT,                       -- the failed step
    error_code    TEXT,
    message       TEXT,
    verified      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX update_history_time ON update_history (time);

CREATE TABLE update_signed_channels (
    base_url   TEXT NOT NULL,
    channel    TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    PRIMARY KEY (base_url, channel)
);
