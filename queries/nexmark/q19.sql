-- Nexmark q19, auction top-10 price: each auction's 10 highest bids (ties broken by the bid's
-- event id, so the answer is deterministic).
CREATE MATERIALIZED VIEW nexmark_q19 AS
SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY auction ORDER BY price DESC, id DESC) AS rank_number
    FROM bid
) T
WHERE rank_number <= 10;
