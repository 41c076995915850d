-- VT.PGA schema, version 2 (SPEC §8, §10, revision 3).
--
-- Ids are kept exactly as parsed, whatever their length and characters: PostgreSQL's text
-- cannot hold U+0000, so the four ids of a transaction are stored as their UTF-8 bytes
-- (bytea; `WHERE payer_id = 'u000123'` still works, the literal is read as bytes). The
-- B-tree index by payer limited the payer id to about 2,700 bytes (one index row); it now
-- holds a 256-byte prefix of the id, and queries add the whole id as a filter.
DROP INDEX transactions_by_payer;
ALTER TABLE transactions
    ALTER COLUMN tx_id TYPE bytea USING convert_to(tx_id, 'UTF8'),
    ALTER COLUMN payer_id TYPE bytea USING convert_to(payer_id, 'UTF8'),
    ALTER COLUMN payee_id TYPE bytea USING convert_to(payee_id, 'UTF8'),
    ALTER COLUMN region_id TYPE bytea USING convert_to(region_id, 'UTF8');
CREATE INDEX transactions_by_payer
    ON transactions (substring(payer_id FROM 1 FOR 256), t DESC);

-- A decision a table still refuses (SPEC §10: no message stops the pipeline) is written
-- here instead, with its SPEC §8 record (JSON bytes), its raw payload when it has one and
-- the store's error; the batch around it commits. Its source position is its identity, as
-- in `transactions`: every position is in exactly one of the two tables.
CREATE TABLE quarantine (
    partition      integer NOT NULL,
    "offset"       bigint NOT NULL,
    t              bigint NOT NULL,
    record         bytea NOT NULL,
    payload        bytea,
    error          text NOT NULL,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, "offset")
);
