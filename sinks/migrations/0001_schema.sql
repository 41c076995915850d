-- VT.PGA schema, version 1. Applied once by `vtpga seed` / `vtpga run --postgres`
-- (recorded in schema_migrations). Money is integer cents; times are ms since the epoch
-- (with timestamptz copies for people).

CREATE TABLE regions (
    id   text PRIMARY KEY,
    uf   text NOT NULL,
    name text NOT NULL,
    lat  double precision NOT NULL,
    lon  double precision NOT NULL
);

CREATE TABLE users (
    id                 text PRIMARY KEY,
    name               text NOT NULL,
    region_id          text NOT NULL,
    balance_cents      bigint NOT NULL,
    credit_limit_cents bigint NOT NULL
);

-- One row per message, identified by its source position (SPEC §8).
CREATE TABLE transactions (
    partition      integer NOT NULL,
    "offset"       bigint NOT NULL,
    t              bigint NOT NULL,
    status         text NOT NULL,
    tx_id          text,
    payer_id       text,
    payee_id       text,
    region_id      text,
    mode           text,
    amount_cents   bigint,
    event_time     timestamptz,
    value_risk     double precision,
    hour_risk      double precision,
    distance_risk  double precision,
    risk           double precision,
    error          text,
    reason         text,
    decided_at     timestamptz NOT NULL,
    PRIMARY KEY (partition, "offset")
);
CREATE INDEX transactions_by_t ON transactions (t DESC);
CREATE INDEX transactions_by_payer ON transactions (payer_id, t DESC);
CREATE INDEX transactions_by_status ON transactions (status, t DESC);
CREATE INDEX transactions_by_tx_id ON transactions USING hash (tx_id);

-- Invalid messages with their raw payload.
CREATE TABLE invalid_messages (
    partition integer NOT NULL,
    "offset"  bigint NOT NULL,
    t         bigint NOT NULL,
    payload   bytea NOT NULL,
    error     text NOT NULL,
    PRIMARY KEY (partition, "offset")
);

-- Users whose state a decision changed; the others still have their reference values.
CREATE TABLE accounts (
    user_id           text PRIMARY KEY,
    balance_cents     bigint NOT NULL,
    credit_used_cents bigint NOT NULL,
    last_approved_ms  bigint
);

CREATE VIEW balances AS
SELECT u.id,
       coalesce(a.balance_cents, u.balance_cents) AS balance_cents,
       coalesce(a.credit_used_cents, 0) AS credit_used_cents,
       u.credit_limit_cents,
       a.last_approved_ms,
       to_timestamp(a.last_approved_ms / 1000.0) AS last_approved_event_time
FROM users u LEFT JOIN accounts a ON a.user_id = u.id;

-- The ten analyses (SPEC §7) as rows: `k` is the row's key (status, band, hour, bucket,
-- hour risk, UF, reason or mode); `minute` the event-time minute index (analyses 9, 10).
CREATE TABLE analysis_rows (
    analysis              text NOT NULL,
    k                     text NOT NULL,
    minute                bigint NOT NULL DEFAULT -1,
    count                 bigint NOT NULL,
    approved              bigint NOT NULL,
    rejected              bigint NOT NULL,
    approved_amount_cents bigint NOT NULL,
    rejected_amount_cents bigint NOT NULL,
    PRIMARY KEY (analysis, k, minute)
);

CREATE FUNCTION minute_text(m bigint) RETURNS text LANGUAGE sql IMMUTABLE AS
$$ SELECT to_char(to_timestamp(m * 60) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:00"Z"') $$;

CREATE VIEW status_counts AS
SELECT s.status, coalesce(r.count, 0) AS count
FROM unnest(ARRAY['invalid', 'late', 'duplicate', 'unknown_reference', 'stale',
                  'insufficient_balance', 'insufficient_limit', 'rejected_risk',
                  'approved']) AS s(status)
LEFT JOIN analysis_rows r ON r.analysis = 'status_counts' AND r.k = s.status;
CREATE VIEW value_histogram AS
SELECT k AS band, approved, rejected FROM analysis_rows WHERE analysis = 'value_histogram';
CREATE VIEW hour_histogram AS
SELECT k::int AS hour, approved, rejected FROM analysis_rows WHERE analysis = 'hour_histogram';
CREATE VIEW value_risk_distribution AS
SELECT k::int AS bucket, approved, rejected, approved_amount_cents, rejected_amount_cents
FROM analysis_rows WHERE analysis = 'value_risk_distribution';
CREATE VIEW hour_risk_outcome AS
SELECT k::double precision AS hour_risk, approved, rejected
FROM analysis_rows WHERE analysis = 'hour_risk_outcome';
CREATE VIEW state_approval AS
SELECT k AS uf, approved, rejected FROM analysis_rows WHERE analysis = 'state_approval';
CREATE VIEW insufficient_funds AS
SELECT k AS reason, count, rejected_amount_cents AS amount_cents
FROM analysis_rows WHERE analysis = 'insufficient_funds';
CREATE VIEW mode_rejections AS
SELECT k AS mode, approved, rejected FROM analysis_rows WHERE analysis = 'mode_rejections';
CREATE VIEW minute_frequency AS
SELECT minute_text(minute) AS minute, count
FROM analysis_rows WHERE analysis = 'minute_frequency';
CREATE VIEW distance_band_outcome AS
SELECT minute_text(minute) AS minute, k AS band, approved, rejected
FROM analysis_rows WHERE analysis = 'distance_band_outcome';

-- Where each source partition resumes, and its last arrival time (the SPEC §4 clamp).
CREATE TABLE source_offsets (
    source      text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    last_t      bigint NOT NULL,
    PRIMARY KEY (source, partition)
);

-- The latest closed arrival time whose outputs are all committed; `credits_through` is
-- set to it once a restart has applied the credits of that time's approvals (due one ms
-- later, so in no committed account yet) to their payees.
CREATE TABLE pipeline_state (
    id              integer PRIMARY KEY CHECK (id = 1),
    source          text NOT NULL,
    cut_time        bigint NOT NULL,
    credits_through bigint,
    updated_at      timestamptz NOT NULL
);
