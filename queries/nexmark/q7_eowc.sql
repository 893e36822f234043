-- Nexmark q7's window part with final results only: the highest bid price (and the number of
-- bids) of each 10-second window, shown once, when bid's watermark passes the window's end.
CREATE MATERIALIZED VIEW nexmark_q7_eowc AS
SELECT window_start, window_end, max(price) AS maxprice, count(*) AS bids
FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND)
GROUP BY window_start, window_end
EMIT ON WINDOW CLOSE;
