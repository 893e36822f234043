-- Nexmark q10, log to file system: every bid with its date and minute as text (the reference
-- writes them to partitioned files; here they are the view's rows).
CREATE MATERIALIZED VIEW nexmark_q10 AS
SELECT auction, bidder, price, date_time, to_char(date_time, 'YYYY-MM-DD') AS date, to_char(date_time, 'HH24:MI') AS time
FROM bid;
