-- Nexmark q2, selection: the bids of some auctions (Flink's form, MOD(auction, 123) = 0).
CREATE MATERIALIZED VIEW nexmark_q2 AS
SELECT auction, price FROM bid WHERE auction % 123 = 0;
