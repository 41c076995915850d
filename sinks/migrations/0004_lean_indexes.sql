-- VT.PGA schema, version 4: the durable path at COPY speed. Every index on `transactions`
-- is paid for by every decision written (measured with `vtpga sinkbench`; README, "Durable
-- path"), so it keeps only what a query reads:
-- * by status: no query reads it (the dashboard's counts are the analyses) — dropped;
-- * by time: rows arrive in time order (one cut after another), so a BRIN index (a few
--   pages for millions of rows) finds a time range as well as the B-tree did, which was
--   the second most costly index to keep up;
-- * by payer: the API reads a payer's latest approvals, so a B-tree of the approved rows'
--   payer id prefix alone (equality is all the query asks; it sorts the payer's rows by
--   time itself; equal keys share one deduplicated entry) replaces the B-tree of every
--   row's (payer prefix, time). Not a hash index: all of a payer's rows fall in one bucket,
--   whose overflow chain every insert walks, so its cost grows with the payer's history.
-- The primary key (source position) and the hash index of the transaction id stay.
DROP INDEX transactions_by_status;
DROP INDEX transactions_by_t;
CREATE INDEX transactions_by_t ON transactions USING brin (t);
DROP INDEX transactions_by_payer;
CREATE INDEX transactions_by_payer ON transactions (substring(payer_id FROM 1 FOR 256))
    WHERE status = 'approved';
