-- VT.PGA schema, version 3 (SPEC §7, revision 3): sums of amounts are exact however long
-- the pipeline runs. bigint holds only about 9·10^7 maximum amounts (10^11 cents each);
-- the pipeline keeps them as 128-bit integers, stored here as numeric (no fraction).
-- The two views that show the sums are dropped and made again around the change.
DROP VIEW value_risk_distribution;
DROP VIEW insufficient_funds;
ALTER TABLE analysis_rows
    ALTER COLUMN approved_amount_cents TYPE numeric(40, 0),
    ALTER COLUMN rejected_amount_cents TYPE numeric(40, 0);
CREATE VIEW value_risk_distribution AS
SELECT k::int AS bucket, approved, rejected, approved_amount_cents, rejected_amount_cents
FROM analysis_rows WHERE analysis = 'value_risk_distribution';
CREATE VIEW insufficient_funds AS
SELECT k AS reason, count, rejected_amount_cents AS amount_cents
FROM analysis_rows WHERE analysis = 'insufficient_funds';
