-- VT.PGA schema, version 3 (SPEC §7, revision 3): sums of amounts are exact however long
-- the pipeline runs. bigint holds only about 9·10^7 maximum amounts (10^11 cents each);
-- the pipeline keeps them as 128-bit integers, stored here as numeric (no fraction).
ALTER TABLE analysis_rows
    ALTER COLUMN approved_amount_cents TYPE numeric(40, 0),
    ALTER COLUMN rejected_amount_cents TYPE numeric(40, 0);
