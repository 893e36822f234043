-- Nexmark q6, average selling price by seller: the average of the winning bids of each
-- seller's last 10 auctions (the reference's OVER window, as Flink and RisingWave write it).
--
-- Not supported by Velocity: a sliding OVER window (AVG ... ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) cannot be maintained yet
-- CREATE MATERIALIZED VIEW fails with SQLSTATE 0A000 "window functions other than
-- ROW_NUMBER() bounded by a filter (rn <= k) is not supported in a materialized view".
-- q6_group_top_n.sql is RisingWave's top-N form of the same question, which Velocity maintains.
CREATE MATERIALIZED VIEW nexmark_q6 AS
SELECT
    Q.seller,
    AVG(Q.final) OVER (PARTITION BY Q.seller ORDER BY Q.date_time ROWS BETWEEN 10 PRECEDING AND CURRENT ROW) AS avg
FROM (
    SELECT MAX(B.price) AS final, A.seller, B.date_time
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
    GROUP BY A.id, A.seller, B.date_time
) AS Q;
