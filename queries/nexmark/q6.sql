-- Nexmark q6, average selling price by seller: the average of the winning bids of each
-- seller's last 10 auctions (the reference's OVER window, as Flink and RisingWave write it).
--
-- One change from the reference: the window orders by (date_time, id), not date_time alone.
-- A seller's auctions often win at the same date_time, and the reference leaves the order
-- of such ties (so which 10 rows a frame holds) unspecified; with the auction id as a
-- tie-breaker the view is one answer that the DataFusion recompute reproduces row for row.
-- Maintained by the window operator: each change recomputes the frames of its seller only.
CREATE MATERIALIZED VIEW nexmark_q6 AS
SELECT
    Q.seller,
    AVG(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.date_time, Q.id ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg
FROM (
    SELECT MAX(B.price) AS final, A.id, A.seller, B.date_time
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.seller, B.date_time
) AS Q;
