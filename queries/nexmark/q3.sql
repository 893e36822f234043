-- Nexmark q3, local item suggestion: who sells in category 10 in Oregon, Idaho or California.
-- (The generator writes states in lower case, as RisingWave's q3 matches them.)
CREATE MATERIALIZED VIEW nexmark_q3 AS
SELECT P.name, P.city, P.state, A.id
FROM auction AS A INNER JOIN person AS P ON A.seller = P.id
WHERE A.category = 10 AND (P.state = 'or' OR P.state = 'id' OR P.state = 'ca');
