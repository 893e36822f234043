-- Nexmark q6 as RisingWave's q6-group-top-n writes it: per seller, the average price of the
-- 10 latest bids placed while their auction was open (ROW_NUMBER bounded by a filter instead
-- of q6's sliding OVER window). Ties on date_time (bids in the same millisecond) are broken by
-- the bid's event id, so the answer is deterministic.
CREATE MATERIALIZED VIEW nexmark_q6_group_top_n AS
SELECT Q.seller, AVG(Q.final) AS avg
FROM (
    SELECT ROW_NUMBER() OVER (PARTITION BY A.seller ORDER BY B.date_time DESC, B.id DESC) AS rank, A.seller, B.price AS final
    FROM auction AS A, bid AS B
    WHERE A.id = B.auction AND B.date_time BETWEEN A.date_time AND A.expires
) AS Q
WHERE Q.rank <= 10
GROUP BY Q.seller;
