-- Nexmark q20, expand bid with auction: bids on auctions of category 10, with the auction's
-- columns.
CREATE MATERIALIZED VIEW nexmark_q20 AS
SELECT auction, bidder, price, channel, url, B.date_time, B.extra,
       item_name, description, initial_bid, reserve, A.date_time AS auction_date_time, expires, seller, category, A.extra AS auction_extra
FROM bid AS B
JOIN auction AS A ON B.auction = A.id
WHERE A.category = 10;
