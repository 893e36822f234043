-- Nexmark q0, pass-through: every bid as it arrives. Measures ingestion and the cost of a view
-- that copies its input.
CREATE MATERIALIZED VIEW nexmark_q0 AS
SELECT auction, bidder, price, date_time FROM bid;
