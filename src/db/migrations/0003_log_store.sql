-- The local log store: what the `store` output writes and `butler logs` / `Streams.*` read.
-- One row per stream (unique by project, prefix and name) and one row per log entry; a text
-- entry's `data` is its lines with their delimiters, so a stream's bytes are its entries' data
-- concatenated in `stream_index` order.
CREATE TABLE log_streams (
    id             INTEGER PRIMARY KEY,
    project        TEXT    NOT NULL,
    prefix         TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    stream_type    TEXT    NOT NULL CHECK (stream_type IN ('text', 'binary', 'datagram')),
    content_type   TEXT    NOT NULL,
    tags           TEXT    NOT NULL DEFAULT '{}',
    timestamp      TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    entries        INTEGER NOT NULL DEFAULT 0,
    bytes          INTEGER NOT NULL DEFAULT 0,
    terminal       INTEGER NOT NULL DEFAULT 0,
    terminal_index INTEGER,
    UNIQUE (project, prefix, name)
);

CREATE TABLE log_entries (
    stream_id      INTEGER NOT NULL REFERENCES log_streams (id) ON DELETE CASCADE,
    stream_index   INTEGER NOT NULL,
    prefix_index   INTEGER NOT NULL,
    sequence       INTEGER NOT NULL,
    time_offset_ns INTEGER NOT NULL,
    lines          INTEGER NOT NULL DEFAULT 0,
    partial_index  INTEGER,
    partial_size   INTEGER,
    partial_last   INTEGER,
    data           BLOB    NOT NULL,
    UNIQUE (stream_id, stream_index)
);
