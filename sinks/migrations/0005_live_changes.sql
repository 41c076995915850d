-- VT.PGA schema, version 5 (SPEC §11): live changes. Reference data and rule sets change
-- while the pipeline runs, as records of the control topic; the tables follow every change
-- in the same transaction as the decisions it affects (sinks/src/postgres.rs).

-- Every decision carries the version of the rule set in force at its `t`.
ALTER TABLE transactions ADD COLUMN rules_version text NOT NULL DEFAULT 'default';

-- A control record that changes nothing is an invalid message too: the topic it came from
-- is part of its identity (a position of the control topic is not one of `transacoes`).
ALTER TABLE invalid_messages ADD COLUMN topic text NOT NULL DEFAULT 'transacoes';
ALTER TABLE invalid_messages DROP CONSTRAINT invalid_messages_pkey;
ALTER TABLE invalid_messages ADD PRIMARY KEY (topic, partition, "offset");

-- The rule sets, each from its effective time on: the initial one (no position, in force
-- from 0: written once, at the first start) and every `rules` record applied, at its
-- effective time `T` and control topic position. A version is never used twice.
CREATE TABLE rule_sets (
    version         text PRIMARY KEY,
    risk_threshold  double precision NOT NULL,
    max_delay_ms    bigint NOT NULL,
    dedup_window_ms bigint NOT NULL,
    effective_ms    bigint NOT NULL,
    partition       integer,
    "offset"        bigint,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
-- At most one initial rule set (processes that start together insert it once).
CREATE UNIQUE INDEX rule_sets_one_initial ON rule_sets ((partition IS NULL))
    WHERE partition IS NULL;

-- Control records accepted (their arrival consumed with the control topic's offsets) whose
-- effective time is after the committed cut: a restart feeds them in again. `record` is
-- the record's canonical JSON; the row goes when the record is applied or rejected.
CREATE TABLE control_pending (
    partition    integer NOT NULL,
    "offset"     bigint NOT NULL,
    t            bigint NOT NULL,
    effective_ms bigint NOT NULL,
    record       text NOT NULL,
    PRIMARY KEY (partition, "offset")
);
