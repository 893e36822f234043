-- Velocity: the logistics track-and-trace pipeline, from TMS change data to loads, business
-- events and KPIs. `velocity demo` runs this file against the built-in TMS simulator; point
-- the source at a real TMS database by swapping the CREATE SOURCE statement, e.g.
--   CREATE SOURCE tms WITH (connector = 'postgres-cdc',
--       connection = 'host=127.0.0.1 port=5432 user=tms dbname=tms', publication = 'velocity', slot = 'velocity');

-- 1. The source: one TMS database, one transaction domain. Each TMS transaction reaches
--    every view at once, as one net change per row (DELETE+INSERT of a row is an UPDATE).
CREATE SOURCE tms WITH (connector = 'generator', scenario = 'logistics', scale = 200, rate = 50);

-- 2. The TMS tables, mirrored from the source.
CREATE TABLE customers (id BIGINT PRIMARY KEY, name TEXT, region TEXT)
    WITH (source = 'tms', upstream = 'public.customers');
CREATE TABLE trips (id BIGINT PRIMARY KEY, load_ref TEXT, carrier TEXT, vehicle TEXT, status TEXT,
        planned_departure TIMESTAMP, actual_departure TIMESTAMP, updated_at TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.trips');
CREATE TABLE legs (id BIGINT PRIMARY KEY, trip_id BIGINT, seq INT, origin TEXT, destination TEXT,
        planned_departure TIMESTAMP, planned_arrival TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.legs');
CREATE TABLE stops (id BIGINT PRIMARY KEY, trip_id BIGINT, leg_id BIGINT, seq INT, location TEXT, kind TEXT,
        status TEXT, planned_at TIMESTAMP, arrived_at TIMESTAMP, departed_at TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.stops');
CREATE TABLE shipments (id BIGINT PRIMARY KEY, trip_id BIGINT, customer_id BIGINT, reference TEXT, status TEXT,
        weight_kg DOUBLE PRECISION, planned_delivery TIMESTAMP, delivered_at TIMESTAMP, updated_at TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.shipments');
CREATE TABLE pickups (id BIGINT PRIMARY KEY, shipment_id BIGINT, stop_id BIGINT, attempt INT, status TEXT,
        reason TEXT, planned_at TIMESTAMP, actual_at TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.pickups');
CREATE TABLE handling_units (id BIGINT PRIMARY KEY, shipment_id BIGINT, trip_id BIGINT, kind TEXT, sscc TEXT,
        weight_kg DOUBLE PRECISION)
    WITH (source = 'tms', upstream = 'public.handling_units');
CREATE TABLE notes (id BIGINT PRIMARY KEY, trip_id BIGINT, author TEXT, body TEXT, created_at TIMESTAMP)
    WITH (source = 'tms', upstream = 'public.notes');

-- 3. Domain views.
-- Every shipment with its customer and load: what a customer-service screen shows.
CREATE MATERIALIZED VIEW shipment_status AS
SELECT s.id AS shipment_id, s.reference, s.status, c.name AS customer, c.region, t.load_ref, t.carrier,
       s.planned_delivery, s.delivered_at, s.updated_at
FROM shipments s
JOIN customers c ON c.id = s.customer_id
JOIN trips t ON t.id = s.trip_id;

-- The last stop each trip reached, and how late it was there (latest-per-key with ROW_NUMBER).
CREATE MATERIALIZED VIEW trip_progress AS
SELECT trip_id, seq AS last_stop, location AS last_location, arrived_at,
       (to_unixtime(arrived_at) - to_unixtime(planned_at)) / 60 AS delay_minutes
FROM (SELECT trip_id, seq, location, arrived_at, planned_at,
             ROW_NUMBER() OVER (PARTITION BY trip_id ORDER BY seq DESC) AS rn
      FROM stops WHERE arrived_at IS NOT NULL) reached
WHERE rn = 1;

-- The final stop of each trip: where the ETA is for.
CREATE MATERIALIZED VIEW trip_destination AS
SELECT trip_id, location AS destination, planned_at
FROM (SELECT trip_id, location, planned_at, ROW_NUMBER() OVER (PARTITION BY trip_id ORDER BY seq DESC) AS rn
      FROM stops) last_stop
WHERE rn = 1;

-- ETA: the planned arrival at the final stop, shifted by the delay at the last stop reached.
CREATE MATERIALIZED VIEW trip_eta AS
SELECT t.id AS trip_id, t.load_ref, t.status, d.destination, d.planned_at AS planned_arrival,
       COALESCE(p.delay_minutes, 0) AS delay_minutes,
       to_timestamp_seconds(to_unixtime(d.planned_at) + 60 * COALESCE(p.delay_minutes, 0)) AS eta
FROM trips t
JOIN trip_destination d ON d.trip_id = t.id
LEFT JOIN trip_progress p ON p.trip_id = t.id;

-- 4. The load entity: trip + ordered legs with their ordered stops + shipments with their
--    handling units + notes, as nested JSON. Changing one stop touches one load row.
CREATE MATERIALIZED VIEW load_legs AS
SELECT l.trip_id,
       json_agg(json_build_object('seq', l.seq, 'origin', l.origin, 'destination', l.destination,
                                  'planned_departure', l.planned_departure, 'planned_arrival', l.planned_arrival,
                                  'stop', json_build_object('location', s.location, 'kind', s.kind, 'status', s.status,
                                                            'planned_at', s.planned_at, 'arrived_at', s.arrived_at,
                                                            'departed_at', s.departed_at))
                ORDER BY l.seq) AS legs
FROM legs l
LEFT JOIN stops s ON s.leg_id = l.id
GROUP BY l.trip_id;

CREATE MATERIALIZED VIEW shipment_units AS
SELECT shipment_id, count(*) AS units, sum(weight_kg) AS units_weight_kg,
       json_agg(json_build_object('sscc', sscc, 'kind', kind, 'weight_kg', weight_kg) ORDER BY id) AS handling_units
FROM handling_units
GROUP BY shipment_id;

CREATE MATERIALIZED VIEW load_shipments AS
SELECT s.trip_id, count(*) AS shipments, sum(u.units) AS handling_units,
       json_agg(json_build_object('reference', s.reference, 'customer', c.name, 'status', s.status,
                                  'weight_kg', s.weight_kg, 'handling_units', u.handling_units)
                ORDER BY s.id) AS shipment_list
FROM shipments s
JOIN customers c ON c.id = s.customer_id
LEFT JOIN shipment_units u ON u.shipment_id = s.id
GROUP BY s.trip_id;

CREATE MATERIALIZED VIEW load_notes AS
SELECT trip_id, json_agg(json_build_object('author', author, 'body', body, 'created_at', created_at)
                         ORDER BY created_at, id) AS notes
FROM notes
GROUP BY trip_id;

CREATE MATERIALIZED VIEW loads AS
SELECT t.id AS trip_id, t.load_ref, t.carrier, t.vehicle, t.status, t.planned_departure, t.actual_departure,
       e.eta, e.delay_minutes, o.origin, ls.shipments, ls.handling_units,
       l.legs, ls.shipment_list AS shipments_detail, n.notes
FROM trips t
LEFT JOIN trip_eta e ON e.trip_id = t.id
LEFT JOIN (SELECT trip_id, location AS origin FROM stops WHERE seq = 0) o ON o.trip_id = t.id
LEFT JOIN load_legs l ON l.trip_id = t.id
LEFT JOIN load_shipments ls ON ls.trip_id = t.id
LEFT JOIN load_notes n ON n.trip_id = t.id;

-- 5. Business events, derived from committed state transitions with changes(): each fires
--    once, in the transaction that made it true, never again while the state stays.
--    Events stay queryable for 7 days (the time window), then leave the views by themselves.
CREATE MATERIALIZED VIEW shipment_departed AS
SELECT after.id AS shipment_id, after.reference, after.trip_id, committed_at
FROM changes(shipments)
WHERE after.status = 'DEPARTED' AND before.status IS DISTINCT FROM 'DEPARTED'
  AND committed_at > now() - INTERVAL '7 days';

CREATE MATERIALIZED VIEW shipment_delivered AS
SELECT after.id AS shipment_id, after.reference, after.delivered_at, after.planned_delivery, committed_at
FROM changes(shipments)
WHERE after.status = 'DELIVERED' AND before.status IS DISTINCT FROM 'DELIVERED'
  AND committed_at > now() - INTERVAL '7 days';

-- A failed pickup, including a retry that fails again (its attempt number changed).
CREATE MATERIALIZED VIEW pickup_failed AS
SELECT after.id AS pickup_id, after.shipment_id, after.attempt, after.reason, committed_at
FROM changes(pickups)
WHERE after.status = 'FAILED'
  AND ((before.status IS DISTINCT FROM 'FAILED') OR (before.attempt IS DISTINCT FROM after.attempt))
  AND committed_at > now() - INTERVAL '7 days';

-- changes(view, 'key') pairs a view's old and new row of one key into an update.
CREATE MATERIALIZED VIEW eta_changed AS
SELECT after.trip_id, after.load_ref, before.eta AS previous_eta, after.eta, after.delay_minutes, committed_at
FROM changes(trip_eta, 'trip_id')
WHERE op = 'update' AND before.eta IS DISTINCT FROM after.eta
  AND committed_at > now() - INTERVAL '7 days';

-- 6. Threshold alerts: a trip's delay crossing 30 minutes upwards, once per crossing.
CREATE MATERIALIZED VIEW delay_alerts AS
SELECT after.trip_id, after.load_ref, after.delay_minutes, after.eta, committed_at
FROM changes(trip_eta, 'trip_id')
WHERE after.delay_minutes > 30 AND COALESCE(before.delay_minutes, 0) <= 30
  AND committed_at > now() - INTERVAL '7 days';

-- Every event in one feed for consumers: kind, entity, payload, when it was committed.
CREATE MATERIALIZED VIEW business_events AS
SELECT 'shipment_departed' AS kind, shipment_id AS entity_id,
       json_build_object('reference', reference, 'trip_id', trip_id) AS payload, committed_at
FROM shipment_departed
UNION ALL
SELECT 'shipment_delivered', shipment_id,
       json_build_object('reference', reference, 'delivered_at', delivered_at, 'planned_delivery', planned_delivery),
       committed_at
FROM shipment_delivered
UNION ALL
SELECT 'pickup_failed', shipment_id, json_build_object('pickup_id', pickup_id, 'attempt', attempt, 'reason', reason),
       committed_at
FROM pickup_failed
UNION ALL
SELECT 'eta_changed', trip_id, json_build_object('load_ref', load_ref, 'previous_eta', previous_eta, 'eta', eta),
       committed_at
FROM eta_changed
UNION ALL
SELECT 'delay_alert', trip_id, json_build_object('load_ref', load_ref, 'delay_minutes', delay_minutes, 'eta', eta),
       committed_at
FROM delay_alerts;

-- 7. Per-customer KPIs over the shipments currently in the TMS (delivered loads are
--    archived after a while).
CREATE MATERIALIZED VIEW customer_kpis AS
SELECT c.id AS customer_id, c.name, c.region,
       count(*) FILTER (WHERE s.status <> 'DELIVERED') AS open_shipments,
       count(*) FILTER (WHERE s.status = 'DELIVERED') AS delivered,
       count(*) FILTER (WHERE s.status = 'DELIVERED' AND s.delivered_at <= s.planned_delivery) AS delivered_on_time,
       CAST(count(*) FILTER (WHERE s.status = 'DELIVERED' AND s.delivered_at <= s.planned_delivery) AS DOUBLE PRECISION)
           / NULLIF(count(*) FILTER (WHERE s.status = 'DELIVERED'), 0) AS on_time_rate
FROM customers c
JOIN shipments s ON s.customer_id = c.id
GROUP BY c.id, c.name, c.region;

-- 8. Consumers: changefeeds over pgwire, e.g.
--   COPY (SUBSCRIBE TO business_events) TO STDOUT;
--   COPY (SUBSCRIBE TO loads WITH (SNAPSHOT = false)) TO STDOUT;
-- and Kafka sinks where a broker runs (the demo has none), each change exactly once:
--   CREATE SINK loads_out FROM loads WITH (connector = 'kafka', brokers = '127.0.0.1:9092',
--       topic = 'loads', format = 'upsert-json', key = 'trip_id');
--   CREATE SINK business_events_out FROM business_events WITH (connector = 'kafka',
--       brokers = '127.0.0.1:9092', topic = 'business-events', format = 'debezium-json',
--       key = 'kind, entity_id');
-- (An event leaving the 7-day window reaches the debezium-json sink as a delete, op 'd'.)
