-- Nexmark q5's window part with final results only: bids per auction in each 10-second window
-- sliding every 2 seconds, a window's rows shown once, when bid's watermark (4 s behind its
-- latest date_time) passes the window's end; the state of closed windows is freed.
CREATE MATERIALIZED VIEW nexmark_q5_eowc AS
SELECT auction, window_start, window_end, count(*) AS num
FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)
GROUP BY auction, window_start, window_end
EMIT ON WINDOW CLOSE;
