-- Streams whose writer died: each stream records the lease token of the butler writing it (see
-- src/streaming/writers.rs), and `abandoned` marks a stream a dead writer left without its
-- terminal entry (set by the next writer to start; readers work it out themselves meanwhile).
ALTER TABLE log_streams ADD COLUMN writer TEXT;
ALTER TABLE log_streams ADD COLUMN abandoned INTEGER NOT NULL DEFAULT 0;
