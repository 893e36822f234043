-- Nexmark q18, find last bid: each bidder's last bid on each auction (ties on date_time broken
-- by the bid's event id, so the answer is deterministic).
CREATE MATERIALIZED VIEW nexmark_q18 AS
SELECT id, auction, bidder, price, channel, url, date_time, extra
FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY bidder, auction ORDER BY date_time DESC, id DESC) AS rank_number
    FROM bid
) T
WHERE rank_number <= 1;
