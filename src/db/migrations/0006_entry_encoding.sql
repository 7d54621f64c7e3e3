-- A log entry's `data` may be stored compressed (see src/streaming/store.rs, `encode_entry`):
-- `encoding` 0 is the bytes as sent; 1 is their size as 4 bytes little-endian, then the bytes as
-- one LZ4 block. Text logs shrink several times, and each byte the store does not write is one
-- it does not write twice (the write-ahead log, then the database).
ALTER TABLE log_entries ADD COLUMN encoding INTEGER NOT NULL DEFAULT 0;
